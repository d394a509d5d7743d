"""LAION aesthetic v2 adapter on a tiny CLIP vision tower and a random head in the published key layout."""

import pytest
import torch
from PIL import Image

from flowrl.rewards import make_reward
from flowrl.rewards.preprocess import OPENAI_MEAN, OPENAI_STD, clip_preprocess


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("aesthetic")
    torch.manual_seed(0)
    config = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=224,
        patch_size=32, projection_dim=768,
    )  # fmt: skip
    CLIPVisionModelWithProjection(config).save_pretrained(root / "clip")
    sizes = [(1024, 768), (128, 1024), (64, 128), (16, 64), (1, 16)]
    state = {}
    for i, (o, n) in zip((0, 2, 4, 6, 7), sizes, strict=True):
        state[f"layers.{i}.weight"], state[f"layers.{i}.bias"] = torch.randn(o, n) / n**0.5, torch.randn(o)
    torch.save(state, root / "head.pth")
    return str(root / "clip"), str(root / "head.pth"), state


def test_preprocessing_matches_clip_image_processor():
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor()  # the published OpenAI transform: shortest side 224, bicubic, centre crop
    assert tuple(proc.image_mean) == OPENAI_MEAN and tuple(proc.image_std) == OPENAI_STD
    g = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 12, generator=g), size=(96, 144), mode="bilinear")
    images = (smooth * 255).round() / 255  # exactly representable in 8 bits, as PIL sees them
    pil = [Image.fromarray((im.permute(1, 2, 0) * 255).round().byte().numpy()) for im in images]
    theirs = proc(images=pil, return_tensors="pt").pixel_values
    ours = clip_preprocess(images)
    assert ours.shape == theirs.shape == (2, 3, 224, 224)
    assert (ours - theirs).abs().mean() < 0.01  # PIL vs torch bicubic and 8-bit rounding differ slightly


def test_score_equals_an_independent_computation(checkpoints):
    from transformers import CLIPVisionModelWithProjection

    clip_path, head_path, state = checkpoints
    reward = make_reward("aesthetic", clip_path=clip_path, head_path=head_path, batch_size=2)
    images = torch.rand(3, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    got = reward(images, ["", "", ""])["score"]
    # by hand: the same preprocessing, the tower's projected embedding, L2 norm, five affine maps
    with torch.no_grad():
        tower = CLIPVisionModelWithProjection.from_pretrained(clip_path)
        emb = tower(pixel_values=clip_preprocess(images)).image_embeds
        x = emb / emb.norm(dim=-1, keepdim=True)
        for i in (0, 2, 4, 6, 7):
            x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    assert got.shape == (3,)
    torch.testing.assert_close(got, x.squeeze(-1), atol=1e-5, rtol=1e-5)


def test_score_is_differentiable_in_the_images(checkpoints):
    from reward_grad import assert_image_gradient

    clip_path, head_path, _ = checkpoints
    reward = make_reward("aesthetic", clip_path=clip_path, head_path=head_path, batch_size=2)
    reward.clip.double(), reward.head.double()  # the tiny head's score moves by ~1e-6 here: float32 cannot see it
    images = 0.2 + 0.6 * torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert_image_gradient(reward, images, ["", ""], h=0.1)


def test_bad_head_is_named(checkpoints, tmp_path):
    clip_path, _, state = checkpoints
    torch.save({k: v for k, v in state.items() if not k.startswith("layers.7")}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"aesthetic head state dict lacks layers\.7\.weight, layers\.7\.bias"):
        make_reward("aesthetic", clip_path=clip_path, head_path=str(tmp_path / "bad.pth"))
