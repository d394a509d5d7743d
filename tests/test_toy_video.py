"""The toy video world: prompts, splits, ground-truth clips and the evaluator's three parts, by hand and as the
``toy-video`` reward."""

from __future__ import annotations

import pytest
import torch

from flowrl.image.data import load_prompts
from flowrl.image.toy_video import (
    DIRECTIONS,
    FRAMES,
    SIZE,
    Clip,
    all_clips,
    parse_clip,
    render_clip,
    score_clip,
    split_clips,
    stray_share,
)
from flowrl.image.toy_world import Clause
from flowrl.rewards import REWARDS, RewardSet, Scores


def test_prompts_parse_back_and_the_splits_are_disjoint_and_complete():
    clips = all_clips()
    assert len(clips) == 48 + 432 and len({c.text for c in clips}) == len(clips)
    assert all(parse_clip(c.text) == c for c in clips)
    assert clips[0].text == "a red circle moving left"
    held, train = split_clips("held-out"), split_clips("train")
    fit, validation = split_clips("train-no-val"), split_clips("validation")
    assert not set(held) & set(train) and len(held) + len(train) == len(clips)
    assert set(fit) | set(validation) == set(train) and not set(fit) & set(validation)
    assert load_prompts("toy-video:held-out") == [c.text for c in held]
    with pytest.raises(ValueError, match="not a toy video prompt"):
        parse_clip("a red circle moving sideways")


def test_every_ground_truth_clip_scores_one_on_every_part():
    for i, clip in enumerate(all_clips()[::5]):
        assert score_clip(render_clip(clip, seed=i), clip.text) == {"objects": 1.0, "motion": 1.0, "consistency": 1.0}


def test_the_evaluator_by_hand():
    mover, other = Clause("square", "red"), Clause("circle", "blue")
    clip = Clip(mover, "right", other)
    video = render_clip(clip, seed=3)
    assert video.shape == (FRAMES, 3, SIZE, SIZE)
    assert not video[: FRAMES // 2, 2].any() and video[FRAMES // 2 :, 2].any()  # blue appears halfway
    frozen = video[:1].expand_as(video).clone()  # the first frame held: objects of the first half, no motion
    s = score_clip(frozen, clip.text)
    assert s["motion"] == 0.0 and s["consistency"] == 1.0
    assert s["objects"] == pytest.approx((4 * 1.0 + 4 * 0.5) / 8)  # second half: the mover there, blue missing
    backwards = video.flip(0)  # played backwards: the mover goes left, the blue circle vanishes
    b = score_clip(backwards, clip.text)
    assert b["motion"] == 0.0 and b["objects"] == pytest.approx(0.5)  # the mover always, blue in the wrong half
    empty = torch.zeros_like(video)
    assert score_clip(empty, clip.text) == {"objects": pytest.approx(4 * 0.5 / 8), "motion": 0.0, "consistency": 0.0}
    flicker = video.clone()
    flicker[1::2] = 0  # the mover in every other frame only
    f = score_clip(flicker, clip.text)
    assert f["consistency"] == pytest.approx(0.5) and f["motion"] == 1.0  # found in half; steady where seen


def test_a_bloated_mover_or_a_noisy_background_is_not_the_object():
    """What RL found first on the old evaluator: blobs twice the size and a background of faint noise kept the mover
    detectable in every frame. Both now cost objects, by hand: area 4x -> size factor (1/4)/0.8; stray 7% -> 0.5."""
    clip = Clip(Clause("square", "red"), "right")
    truth = render_clip(clip, seed=3)
    assert score_clip(truth, clip.text)["objects"] == 1.0
    bloated = torch.zeros_like(truth)
    for f in range(truth.shape[0]):  # each frame's square drawn at twice its side (4x its area), centred alike
        ys, xs = truth[f, 0].nonzero(as_tuple=True)
        cy, cx, half = int(ys.float().mean()), int(xs.float().mean()), int(ys.max() - ys.min() + 1)
        bloated[f, 0, max(0, cy - half) : cy + half, max(0, cx - half) : cx + half] = 1.0
    area = float((bloated[0, 0] > 0).sum())
    expected = min(1.0, float((truth[0, 0] > 0).sum()) / area / 0.8)
    assert score_clip(bloated, clip.text)["objects"] == pytest.approx(expected, abs=0.05)
    noisy = truth.clone()
    speckle = torch.zeros(32, 32, dtype=torch.bool)
    speckle.view(-1)[torch.randperm(1024, generator=torch.Generator().manual_seed(0))[:400]] = True
    speckle &= truth[0].sum(0) == 0  # on the background of the first frame only
    keep = int(0.07 * 1024)
    idx = speckle.view(-1).nonzero().squeeze(1)[:keep]
    noisy[0].view(3, -1)[:, idx] = torch.tensor([0.5, 0.1, 0.5])[:, None]  # purple: near no palette colour
    assert stray_share(noisy[0]) == pytest.approx(keep / 1024)
    s = score_clip(noisy, clip.text)
    assert s["objects"] == pytest.approx((7 + (1 - (keep / 1024 - 0.02) / 0.1)) / 8)
    assert s["consistency"] == 1.0 and s["motion"] == 1.0  # the other parts do not see it


def test_the_reward_scores_videos_and_logs_each_part():
    assert REWARDS.facts("toy-video").scores is Scores.VIDEOS
    clips = [Clip(Clause("triangle", "green"), d) for d in DIRECTIONS]
    videos = torch.stack([render_clip(c, seed=k) for k, c in enumerate(clips)])
    prompts = [c.text for c in clips]
    total, parts = RewardSet.from_specs([{"name": "toy-video"}])(videos, prompts)
    assert torch.equal(total, torch.ones(4)) and torch.equal(parts["toy-video/motion"], torch.ones(4))
    still = videos[:, :1].expand_as(videos).contiguous()
    total, parts = RewardSet.from_specs([{"name": "toy-video"}])(still, prompts)
    assert torch.allclose(total, torch.full((4,), 2 / 3)) and torch.equal(parts["toy-video/motion"], torch.zeros(4))
    with pytest.raises(Exception, match=r"scores videos \[B, F, 3, H, W\]"):
        RewardSet.from_specs([{"name": "toy-video"}])(videos[:, 0], prompts)


def test_a_part_alone_is_the_score_so_gdpo_can_take_the_parts_as_columns():
    clip = Clip(Clause("circle", "blue"), "up")
    still = render_clip(clip)[:1].expand(8, -1, -1, -1)[None].contiguous()  # objects 1, motion 0, consistency 1
    specs = [{"name": "toy-video", "label": k, "weight": 1 / 3, "options": {"part": k}}
             for k in ("objects", "motion", "consistency")]  # fmt: skip
    total, parts = RewardSet.from_specs(specs)(still, [clip.text])
    assert torch.allclose(total, torch.tensor([2 / 3]))  # the same total as the reward's plain mean
    assert parts["motion"].tolist() == [0.0] and parts["consistency"].tolist() == [1.0]
    with pytest.raises(ValueError, match="toy-video part must be one of objects, motion, consistency"):
        RewardSet.from_specs([{"name": "toy-video", "options": {"part": "speed"}}])


def test_the_shipped_video_base_loads_as_a_users_checkpoint_and_makes_clips():
    """assets/toy-wan (scripts/pretrain_toy_video.py) through the video demo's config: clips of the frame count and
    size it was trained at, scored by the reward on every part; its report states the held-out parts."""
    import json

    from flowrl.image.generate import generate
    from flowrl.image.models import WanPolicy, policy_for
    from flowrl.recipes import load_config

    cfg = load_config("configs/video_demo.yaml")
    policy = policy_for(cfg.model)
    assert isinstance(policy, WanPolicy) and policy.latent_shape(32) == (3, 8, 32, 32)
    prompts = load_prompts("toy-video:held-out")[:2]
    videos = generate(policy, prompts, [0, 0], resolution=32, num_steps=4)
    assert videos.shape == (2, 8, 3, 32, 32) and 0 <= videos.min() and videos.max() <= 1
    _, parts = RewardSet.from_specs([{"name": "toy-video"}])(videos, prompts)
    assert all(torch.isfinite(parts[f"toy-video/{k}"]).all() for k in ("objects", "motion", "consistency"))
    report = json.load(open("assets/toy-wan/pretrain_report.json"))
    assert report["num_eval_samples"] == 192 and 0 < report["held_out_motion"] < report["held_out_objects"]
