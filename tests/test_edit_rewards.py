"""Preservation rewards for editing beyond CLIP: DINOv2 image similarity and LPIPS, on tiny models saved as a user's
checkpoints would be (a ``Dinov2Model`` folder; torchvision's cache holding the LPIPS backbone), against hand
computations and the ``lpips`` package itself."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from flowrl.rewards import RewardSet, make_reward


def _sources(folder: Path, count: int, size: tuple[int, int]) -> tuple[torch.Tensor, list[list[str]]]:
    """``count`` random RGB PNGs of ``size`` (H, W): their pixels ``[count, 3, H, W]`` and rows' ``image`` column."""
    pixels = np.random.default_rng(0).integers(0, 256, (count, *size, 3), dtype=np.uint8)
    paths = []
    for k in range(count):
        Image.fromarray(pixels[k]).save(folder / f"src{k}.png")
        paths.append([str(folder / f"src{k}.png")])
    return torch.from_numpy(pixels.astype(np.float32) / 255).permute(0, 3, 1, 2), paths


@pytest.fixture(scope="module")
def dino_dir(tmp_path_factory) -> str:
    from transformers import Dinov2Config, Dinov2Model

    path = tmp_path_factory.mktemp("dino") / "model"
    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                          patch_size=16, image_size=224)  # fmt: skip
    Dinov2Model(config).save_pretrained(path)
    (path / "preprocessor_config.json").write_text('{"size": {"shortest_edge": 72}, "crop_size": {"height": 64}}')
    return str(path)


def test_dino_image_similarity_is_the_class_token_cosine_after_dinos_transform(dino_dir, tmp_path):
    from transformers import Dinov2Model

    sources, image = _sources(tmp_path, 2, (40, 56))
    edits = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    prompts = ["make it red", "add a square"]
    inputs = {p: {"image": paths} for p, paths in zip(prompts, image, strict=True)}
    spec = [{"name": "image-similarity", "options": {"path": dino_dir, "batch_size": 1}}]
    score = RewardSet.from_specs(spec)(edits, prompts, inputs=inputs)[1]["image-similarity"]

    def by_hand(x: torch.Tensor) -> torch.Tensor:  # shortest side 40 -> 72 (bicubic), centre 64 x 64, ImageNet stats
        x = F.interpolate(x, size=(72, 100), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
        x = x[..., 4:68, 18:82]
        mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
        with torch.no_grad():
            return model(pixel_values=(x - mean.view(3, 1, 1)) / std.view(3, 1, 1)).pooler_output

    model = Dinov2Model.from_pretrained(dino_dir).eval()
    expected = F.cosine_similarity(by_hand(edits), by_hand(sources), dim=-1)
    torch.testing.assert_close(score, expected, atol=1e-5, rtol=1e-5)
    assert expected.abs().max() < 0.999  # the edits are not their sources: the check has room to fail
    same = make_reward("image-similarity", path=dino_dir)(sources, prompts, image=image)["score"]
    torch.testing.assert_close(same, torch.ones(2), atol=1e-5, rtol=0)


def test_image_similarity_refuses_a_model_it_cannot_embed_with(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8,
                         vocab_size=20)).save_pretrained(tmp_path / "bert")  # fmt: skip
    with pytest.raises(Exception, match="holds a 'bert' model; valid: clip, dinov2"):
        make_reward("image-similarity", path=str(tmp_path / "bert"))


@pytest.fixture
def alexnet_cache(tmp_path, monkeypatch) -> None:
    """torchvision's cache (``TORCH_HOME``) holding a random AlexNet under the published file name, as a machine
    without internet must hold the real one."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    folder = tmp_path / "torch" / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet().state_dict(), folder / "alexnet-owt-7be5be79.pth")


@pytest.mark.filterwarnings("ignore::UserWarning")  # torchvision's notice about lpips's `pretrained=` argument
def test_lpips_is_one_minus_the_packages_distance(alexnet_cache, tmp_path):
    lpips = pytest.importorskip("lpips")
    sources, image = _sources(tmp_path, 3, (32, 48))
    edits = sources.clone()
    edits[1, :, 8:20, 10:30] = 1.0  # a white patch
    edits[2] = torch.rand(3, 32, 48, generator=torch.Generator().manual_seed(2))
    out = make_reward("lpips", batch_size=2)(edits, ["a", "b", "c"], image=image)
    metric = lpips.LPIPS(net="alex", verbose=False).eval()
    up = [F.interpolate(x, size=(64, 96), mode="bilinear", align_corners=False) for x in (edits, sources)]
    with torch.no_grad():  # the 32 px side is brought to 64, then the package's distance in [-1, 1]
        distance = metric(up[0] * 2 - 1, up[1] * 2 - 1).flatten()
    torch.testing.assert_close(out["distance"], distance, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out["score"], 1 - distance)
    assert out["distance"][0] < 1e-9 and 1e-3 < out["distance"][1] < out["distance"][2]  # unchanged < patch < noise
    with pytest.raises(ValueError, match="net must be alex, vgg or squeeze"):
        make_reward("lpips", net="resnet")


def test_a_source_of_another_size_is_centre_cropped_to_the_edits_aspect_and_resized(tmp_path):
    from flowrl.rewards.preprocess import load_image

    pixels = np.random.default_rng(5).integers(0, 256, (20, 40, 3), dtype=np.uint8)  # H 20, W 40
    Image.fromarray(pixels).save(tmp_path / "wide.png")
    x = torch.from_numpy(pixels.astype(np.float32) / 255).permute(2, 0, 1)
    assert torch.equal(load_image(str(tmp_path / "wide.png"), (20, 40)), x)  # its own size: as stored
    square = F.interpolate(x[None, :, :, 10:30], size=(10, 10), mode="bilinear", antialias=True, align_corners=False)
    torch.testing.assert_close(load_image(str(tmp_path / "wide.png"), (10, 10)), square[0].clamp(0, 1))
