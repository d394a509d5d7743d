"""PickScore and CLIPScore on a tiny CLIPModel saved with a real CLIP tokenizer, against a hand computation."""

import pytest
import torch

from flowrl.image.models.toy import clip_tokenizer
from flowrl.rewards import make_reward
from flowrl.rewards.preprocess import clip_preprocess


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> str:
    from transformers import CLIPConfig, CLIPModel

    path = tmp_path_factory.mktemp("clip") / "model"
    torch.manual_seed(0)
    text = {"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
            "num_attention_heads": 2, "max_position_embeddings": 77, "bos_token_id": 49406, "eos_token_id": 49407,
            "pad_token_id": 49407}  # fmt: skip
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
              "image_size": 224, "patch_size": 32}  # fmt: skip
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(path)
    clip_tokenizer(77).save_pretrained(path)
    return str(path)


def _by_hand(path: str, images: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, float]:
    from transformers import AutoTokenizer, CLIPModel

    model, tok = CLIPModel.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)
    ids = tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        img = model.visual_projection(model.vision_model(pixel_values=clip_preprocess(images)).pooler_output)
        txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)
    cos = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    return cos, model.logit_scale.exp().item()


def test_pickscore_and_clipscore_equal_the_hand_computation(clip_dir):
    images = torch.rand(3, 3, 40, 56, generator=torch.Generator().manual_seed(0))
    prompts = ["a red circle", "two blue squares", "a photo of a cat " * 30]  # the last one is truncated to 77
    cos, scale = _by_hand(clip_dir, images, prompts)
    pick = make_reward("pickscore", path=clip_dir, scale=26.0, batch_size=2)(images, prompts)
    torch.testing.assert_close(pick["raw"], scale * cos, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(pick["score"], scale * cos / 26.0, atol=1e-5, rtol=1e-5)
    clip = make_reward("clipscore", path=clip_dir)(images, prompts)["score"]
    torch.testing.assert_close(clip, (100 * cos).clamp(min=0), atol=1e-4, rtol=1e-5)
    assert scale == pytest.approx(1 / 0.07, rel=1e-4)  # CLIP's initial temperature


def test_pickscore_is_differentiable_in_the_images(clip_dir):
    from reward_grad import assert_image_gradient

    from flowrl.rewards import REWARDS

    assert REWARDS.facts("pickscore").differentiable and REWARDS.facts("clipscore").differentiable
    images = 0.2 + 0.6 * torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    assert_image_gradient(make_reward("pickscore", path=clip_dir), images, ["a red circle", "two blue squares"])


def test_mismatched_prompts_are_named(clip_dir):
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        make_reward("clipscore", path=clip_dir)(torch.rand(2, 3, 32, 32), ["one"])


def test_image_similarity_is_the_clip_image_cosine_of_each_edit_and_its_source(clip_dir, tmp_path):
    import numpy as np
    from PIL import Image

    from flowrl.rewards import REWARDS, RewardSet

    pixels = np.random.default_rng(0).integers(0, 256, (2, 40, 56, 3), dtype=np.uint8)
    paths = []
    for k in range(2):
        Image.fromarray(pixels[k]).save(tmp_path / f"src{k}.png")
        paths.append(str(tmp_path / f"src{k}.png"))
    sources = torch.from_numpy(pixels.astype(np.float32) / 255).permute(0, 3, 1, 2)
    edits = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    prompts = ["make it red", "add a square"]
    inputs = {p: {"image": [path]} for p, path in zip(prompts, paths, strict=True)}
    score = RewardSet.from_specs([{"name": "image-similarity", "options": {"path": clip_dir}}])(
        edits, prompts, inputs=inputs
    )[1]["image-similarity"]
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        a = model.visual_projection(model.vision_model(pixel_values=clip_preprocess(edits)).pooler_output)
        b = model.visual_projection(model.vision_model(pixel_values=clip_preprocess(sources)).pooler_output)
    torch.testing.assert_close(score, torch.nn.functional.cosine_similarity(a, b, dim=-1), atol=1e-5, rtol=1e-5)
    same = make_reward("image-similarity", path=clip_dir)(sources, prompts, image=[[p] for p in paths])["score"]
    torch.testing.assert_close(same, torch.ones(2), atol=1e-5, rtol=0)  # an unchanged source scores 1
    assert REWARDS.facts("image-similarity").inputs == ("image",)


def test_clip_direction_is_the_cosine_of_the_image_change_and_the_caption_change(clip_dir, tmp_path):
    import numpy as np
    from PIL import Image
    from transformers import AutoTokenizer, CLIPModel

    from flowrl.rewards import REWARDS

    pixels = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    image = []
    for k in range(2):
        Image.fromarray(pixels[k]).save(tmp_path / f"s{k}.png")
        image.append([str(tmp_path / f"s{k}.png")])
    sources = torch.from_numpy(pixels.astype(np.float32) / 255).permute(0, 3, 1, 2)
    edits = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    before, after = ["two red circles", "a blue square"], ["two green circles", "two blue squares"]
    reward = make_reward("clip-direction", path=clip_dir, batch_size=1)
    out = reward(edits, ["make them green", "add a square"], image=image, source_caption=before, target=after)

    model, tok = CLIPModel.from_pretrained(clip_dir).eval(), AutoTokenizer.from_pretrained(clip_dir)

    def unit(x: torch.Tensor) -> torch.Tensor:
        return x / x.norm(dim=-1, keepdim=True)

    def img(x: torch.Tensor) -> torch.Tensor:
        return unit(model.visual_projection(model.vision_model(pixel_values=clip_preprocess(x)).pooler_output))

    def txt(texts: list[str]) -> torch.Tensor:
        ids = tok(texts, padding="max_length", max_length=77, return_tensors="pt").input_ids
        return unit(model.text_projection(model.text_model(input_ids=ids).pooler_output))

    with torch.no_grad():
        expected = torch.nn.functional.cosine_similarity(img(edits) - img(sources), txt(after) - txt(before), dim=-1)
    torch.testing.assert_close(out["score"], expected, atol=1e-5, rtol=1e-4)
    unchanged = reward(sources, ["a", "b"], image=image, source_caption=before, target=after)["score"]
    assert torch.equal(unchanged, torch.zeros(2))  # no change points nowhere
    assert REWARDS.facts("clip-direction").inputs == ("image", "source_caption", "target")


def test_each_distinct_text_is_embedded_once_and_every_row_gets_its_own(clip_dir):
    from flowrl.rewards.clip_similarity import ClipSimilarity

    clip = ClipSimilarity(clip_dir, batch_size=2)
    seen: list[int] = []
    embed = clip.model.get_text_features

    def counted(input_ids: torch.Tensor):
        seen.append(input_ids.shape[0])
        return embed(input_ids=input_ids)

    clip.model.get_text_features = counted
    texts = ["two red circles", "a blue square", "two red circles", "two red circles", "a cat"]
    out = clip.texts(texts)
    assert sum(seen) == 3  # a rollout group's repeated prompt is embedded once
    alone = torch.cat([clip.texts([t]) for t in texts])
    torch.testing.assert_close(out, alone, atol=1e-6, rtol=0)
    assert not torch.allclose(out[0], out[1])


def test_video_rewards_over_time_by_hand(clip_dir):
    from transformers import CLIPModel

    levels = torch.tensor([0.2, 0.3, 0.5, 0.5])  # each frame one grey level
    video = levels.view(1, 4, 1, 1, 1).expand(1, 4, 3, 16, 16).clone()
    frozen = video[:, :1].expand_as(video).contiguous()
    both = torch.cat([video, frozen])
    steps = (levels[1:] - levels[:-1]).abs()  # 0.1, 0.2, 0
    moved = make_reward("motion", target=0.2)(both, ["a", "b"])
    torch.testing.assert_close(moved["amount"], torch.stack([steps.mean(), torch.tensor(0.0)]))
    torch.testing.assert_close(moved["score"], torch.stack([steps.mean() / 0.2, torch.tensor(0.0)]))
    plain = make_reward("temporal-consistency")(both, ["a", "b"])
    torch.testing.assert_close(plain["score"], torch.stack([1 - steps.mean(), torch.tensor(1.0)]))
    torch.testing.assert_close(plain["flicker"], torch.stack([steps.mean(), torch.tensor(0.0)]))
    clip = make_reward("temporal-consistency", path=clip_dir)(both, ["a", "b"])
    model = CLIPModel.from_pretrained(clip_dir).eval()
    with torch.no_grad():
        e = model.visual_projection(model.vision_model(pixel_values=clip_preprocess(video[0])).pooler_output)
    e = e / e.norm(dim=-1, keepdim=True)
    expected = (e[1:] * e[:-1]).sum(-1).mean()
    torch.testing.assert_close(clip["score"], torch.stack([expected, torch.tensor(1.0)]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match=r"videos of 2 or more frames"):
        make_reward("motion")(video[:, 0], ["a"])


def test_per_frame_scores_the_chosen_frames_of_each_video_and_aggregates(clip_dir):
    from flowrl.rewards.per_frame import chosen_frames

    assert chosen_frames(9, 4) == [0, 4, 8] and chosen_frames(8, 3) == [0, 3, 6, 7] and chosen_frames(5, 10) == [0, 4]
    videos = torch.rand(2, 5, 3, 40, 40, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "two blue squares"]
    frames = make_reward("clipscore", path=clip_dir)
    alone = torch.stack([frames(videos[b, [0, 2, 4]], [prompts[b]] * 3)["score"] for b in range(2)])  # [2, 3]
    for aggregate, expected in (("mean", alone.mean(1)), ("min", alone.min(1).values),
                                ("first-last", (alone[:, 0] + alone[:, -1]) / 2)):  # fmt: skip
        out = make_reward("per-frame", reward="clipscore", options={"path": clip_dir}, every=2, aggregate=aggregate)
        got = out(videos, prompts)
        torch.testing.assert_close(got["score"], expected, atol=1e-5, rtol=1e-5)
        assert got["frames_scored"].tolist() == [3.0, 3.0]
    with pytest.raises(ValueError, match="aggregate must be one of mean, min, first-last"):
        make_reward("per-frame", reward="clipscore", aggregate="max")
