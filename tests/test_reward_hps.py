"""HPSv2 adapter on a tiny open_clip model (registered config) saved as an HPS-style checkpoint."""

import json

import pytest
import torch
from PIL import Image

from flowrl.rewards import make_reward
from flowrl.rewards.preprocess import longest_side_preprocess

TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 32, "patch_size": 32, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def hps_checkpoint(tmp_path_factory) -> str:
    import open_clip

    root = tmp_path_factory.mktemp("hps")
    (root / "configs").mkdir()
    (root / "configs" / "tiny-hps-test.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(str(root / "configs"))
    torch.manual_seed(0)
    model = open_clip.create_model("tiny-hps-test", pretrained=None)
    torch.save({"state_dict": model.state_dict()}, root / "hps.pt")
    return str(root / "hps.pt")


def test_preprocessing_matches_open_clip_longest_mode(hps_checkpoint):
    import open_clip

    _, _, preprocess = open_clip.create_model_and_transforms(
        "tiny-hps-test", pretrained=None, image_resize_mode="longest"
    )
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 6, 10, generator=torch.Generator().manual_seed(0)),
                                             size=(60, 100), mode="bilinear")  # fmt: skip
    images = (smooth * 255).round() / 255
    theirs = torch.stack(
        [preprocess(Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy())) for im in images]
    )
    ours = longest_side_preprocess(images)
    assert ours.shape == theirs.shape == (2, 3, 224, 224)
    assert (ours - theirs).abs().mean() < 0.01


def test_score_is_the_cosine_of_the_embeddings(hps_checkpoint):
    import open_clip

    reward = make_reward("hpsv2", checkpoint=hps_checkpoint, arch="tiny-hps-test", batch_size=2)
    images = torch.rand(3, 3, 48, 32, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "two blue squares", "a cat"]
    got = reward(images, prompts)["score"]
    model = open_clip.create_model("tiny-hps-test", pretrained=None)
    model.load_state_dict(torch.load(hps_checkpoint, weights_only=True)["state_dict"])
    with torch.no_grad():
        img = model.encode_image(longest_side_preprocess(images))
        txt = model.encode_text(open_clip.get_tokenizer("tiny-hps-test")(prompts))
    expected = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_score_is_differentiable_in_the_images(hps_checkpoint):
    from reward_grad import assert_image_gradient

    reward = make_reward("hpsv2", checkpoint=hps_checkpoint, arch="tiny-hps-test", batch_size=2)
    images = 0.2 + 0.6 * torch.rand(2, 3, 48, 32, generator=torch.Generator().manual_seed(2))
    assert_image_gradient(reward, images, ["a red circle", "a cat"])


def test_checkpoint_without_state_dict_is_named(hps_checkpoint, tmp_path):
    torch.save({"weights": {}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="has no 'state_dict' entry"):
        make_reward("hpsv2", checkpoint=str(tmp_path / "bad.pt"), arch="tiny-hps-test")
