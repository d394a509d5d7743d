"""The pairwise VLM judge against a scripted OpenAI-compatible server on 127.0.0.1, and groupwise RewardSet calls.

The fake judge decodes the PNG images it is sent and, unless a test scripts it otherwise, prefers the brighter
one, so every expected win rate below can be worked out by hand from the images' grey levels.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from fake_judge import FakeJudge, Reply, brighter, shown_levels
from PIL import Image

from flowrl.rewards import RewardSet, make_reward
from flowrl.rewards.http import HTTPCallError
from flowrl.rewards.vlm_judge import balanced_first


@pytest.fixture
def judge() -> Iterator[FakeJudge]:
    server = FakeJudge()
    yield server
    server.close()


def grey(*levels: int) -> torch.Tensor:
    """Flat images ``[len(levels), 3, 8, 8]`` of 8-bit grey levels (exact through PNG)."""
    return torch.tensor(levels, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 8, 8) / 255


def judge_reward(judge: FakeJudge, **options: Any):
    return make_reward("vlm-judge", base_url=judge.base_url, model="fake-judge", timeout=5.0, **options)


def test_win_rates_of_two_interleaved_groups(judge):
    # group 0 (a): levels 50, 200, 120, 120 -> 200 beats all, 50 loses all, the two 120s tie with each other
    # group 1 (b): levels 10, 30, 20       -> 30 wins both, 20 wins one, 10 none
    images = grey(50, 10, 200, 30, 120, 20, 120)
    groups = torch.tensor([0, 1, 0, 1, 0, 1, 0])
    prompts = ["a" if g == 0 else "b" for g in groups.tolist()]
    out = judge_reward(judge)(images, prompts, groups=groups)
    torch.testing.assert_close(out["score"], torch.tensor([0, 0, 1, 1, 0.5, 0.5, 0.5], dtype=torch.float64))
    torch.testing.assert_close(out["ties"], torch.tensor([0, 0, 0, 0, 1 / 3, 0, 1 / 3], dtype=torch.float64))
    assert out["unparseable"].eq(0).all()
    assert len(judge.requests) == 4 * 3 // 2 + 3 * 2 // 2  # every unordered pair once
    # the preference matrix by hand (rows win against columns; across groups 0): what the pairwise estimator reads
    p = out["preferences"]
    assert p[2, 0] == 1 and p[0, 2] == 0 and p[4, 6] == p[6, 4] == 0.5 and p[3, 1] == p[3, 5] == 1 and p[5, 1] == 1
    assert p[0, 1] == 0 and p.diagonal().eq(0).all()
    torch.testing.assert_close(p.sum(1) / torch.tensor([3, 2, 3, 2, 3, 2, 3.0], dtype=torch.float64), out["score"])


def test_malformed_answers_count_half_and_are_logged(judge):
    # any pair involving the level-90 image gets an answer without a verdict
    judge.script = lambda body, n: (200, "Hard to say." if 90 / 255 in shown_levels(body) else brighter(body), 0.0)
    out = judge_reward(judge)(grey(10, 50, 90), ["p"] * 3, groups=torch.zeros(3, dtype=torch.long))
    # 10: lost to 50, half vs 90 -> 0.5/2; 50: beat 10, half vs 90 -> 1.5/2; 90: two halves -> 1/2
    torch.testing.assert_close(out["score"], torch.tensor([0.25, 0.75, 0.5], dtype=torch.float64))
    torch.testing.assert_close(out["unparseable"], torch.tensor([0.5, 0.5, 1.0], dtype=torch.float64))


@pytest.mark.parametrize(
    "template",
    [
        "<think>{noise}</think>\n<answer>Image {k} is better</answer>",
        "<think>{noise}</think>\n\nImage {k}",
        "{noise}\nAfter weighing both, the better image is Image {k}.",
    ],
)
def test_think_style_replies_use_the_final_verdict(judge, template):
    def reply(body: dict[str, Any], n: int) -> Reply:
        first, second = shown_levels(body)
        k, other = (1, 2) if first > second else (2, 1)
        # long reasoning that praises the loser first, as think models do before concluding
        noise = f"Image {other} is better lit at first glance. " * 20 + f"But Image {other} has artifacts."
        return 200, template.format(noise=noise, k=k), 0.0

    judge.script = reply
    out = judge_reward(judge)(grey(40, 160, 100), ["p"] * 3, groups=torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(out["score"], torch.tensor([0.0, 1.0, 0.5], dtype=torch.float64))
    assert out["unparseable"].eq(0).all()


@pytest.mark.parametrize("order", ["balanced", "random", "fixed"])
def test_position_swaps_map_verdicts_back_to_the_images(judge, order):
    images, groups = grey(40, 160, 100, 220), torch.zeros(4, dtype=torch.long)
    out = judge_reward(judge, order=order, seed=3)(images, ["p"] * 4, groups=groups)
    torch.testing.assert_close(out["score"], torch.tensor([0, 2 / 3, 1 / 3, 1], dtype=torch.float64))


def test_balanced_order_cancels_a_first_position_bias(judge):
    judge.script = lambda body, n: (200, "Image 1 is better", 0.0)  # a judge that always picks the first image
    images, prompts, groups = grey(10, 20, 30), ["p"] * 3, torch.zeros(3, dtype=torch.long)
    fixed = judge_reward(judge, order="fixed")(images, prompts, groups=groups)["score"]
    torch.testing.assert_close(fixed, torch.tensor([1.0, 0.5, 0.0], dtype=torch.float64))  # lower index leads
    balanced = judge_reward(judge, order="balanced")(images, prompts, groups=groups)["score"]
    torch.testing.assert_close(balanced, torch.full((3,), 0.5, dtype=torch.float64))  # each leads once
    # even groups: each member leads in G/2 or G/2 - 1 of its G - 1 pairs
    for size in (4, 6):
        leads = [0] * size
        for i in range(size):
            for j in range(i + 1, size):
                leads[i if balanced_first(i, j, size) else j] += 1
        assert sorted(set(leads)) == [size // 2 - 1, size // 2]


def test_random_order_is_deterministic_given_the_seed(judge):
    images, prompts, groups = grey(10, 20, 30, 40, 50), ["p"] * 5, torch.zeros(5, dtype=torch.long)
    orders = []
    for seed in (7, 7, 8):
        before = len(judge.requests)
        judge_reward(judge, order="random", seed=seed, workers=1)(images, prompts, groups=groups)
        orders.append([tuple(shown_levels(b)) for b in judge.requests[before:]])
    assert orders[0] == orders[1] != orders[2]


def test_request_body_format(judge):
    images = torch.rand(2, 3, 6, 5, generator=torch.Generator().manual_seed(0))
    reward = judge_reward(judge, temperature=0.7, max_tokens=256, order="fixed")
    reward(images, ["a red {cube}"] * 2, groups=torch.tensor([4, 4]))
    (body,) = judge.requests
    assert body["model"] == "fake-judge" and body["temperature"] == 0.7 and body["max_tokens"] == 256
    (message,) = body["messages"]
    assert message["role"] == "user"
    kinds = [part["type"] for part in message["content"]]
    assert kinds == ["image_url", "image_url", "text"]
    assert "a red {cube}" in message["content"][2]["text"]  # braces in prompts survive the template
    for part, image in zip(message["content"][:2], images, strict=True):
        header, data = part["image_url"]["url"].split(",", 1)
        assert header == "data:image/png;base64"
        decoded = torch.from_numpy(np.array(Image.open(io.BytesIO(base64.b64decode(data))))).permute(2, 0, 1)
        assert torch.equal(decoded, (image * 255).round().to(torch.uint8))
    assert "Authorization" not in judge.headers[0]


def test_pointwise_scores_divide_by_five(judge):
    def reply(body: dict[str, Any], n: int) -> Reply:
        (level,) = shown_levels(body)
        answers = {10: "Score: 2", 60: "<think>Score 1? No.</think> Final rating: **4.5**/5", 110: "5", 160: "meh"}
        return 200, answers[round(level * 255)], 0.0

    judge.script = reply
    reward = judge_reward(judge, mode="pointwise")
    assert not reward.groupwise
    out = reward(grey(10, 60, 110, 160), ["p", "q", "r", "s"])  # no groups needed
    torch.testing.assert_close(out["score"], torch.tensor([0.4, 0.9, 1.0, 0.6]))  # unparseable -> midpoint 3/5
    torch.testing.assert_close(out["unparseable"], torch.tensor([0.0, 0.0, 0.0, 1.0]))
    assert all(len(b["messages"][0]["content"]) == 2 for b in judge.requests)  # one image + the instruction


def test_a_stalled_request_times_out_and_is_retried(judge):
    judge.script = lambda body, n: (200, brighter(body), 2.0 if n == 0 else 0.0)
    reward = judge_reward(judge, retries=2, backoff=0.01)
    reward.timeout = 0.3
    start = time.perf_counter()
    out = reward(grey(10, 20), ["p", "p"], groups=torch.tensor([0, 0]))
    assert time.perf_counter() - start < 1.5  # did not wait for the stalled answer
    torch.testing.assert_close(out["score"], torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert len(judge.requests) == 2


def test_503_is_retried_then_succeeds_and_persistent_errors_name_url_and_status(judge):
    judge.script = lambda body, n: (503, '{"error": "loading"}', 0.0) if n < 2 else (200, brighter(body), 0.0)
    out = judge_reward(judge, retries=3, backoff=0.01)(grey(10, 20), ["p", "p"], groups=torch.tensor([0, 0]))
    assert out["score"].tolist() == [0.0, 1.0] and len(judge.requests) == 3
    judge.script = lambda body, n: (503, '{"error": "overloaded"}', 0.0)
    with pytest.raises(HTTPCallError, match=r"chat/completions.*503.*overloaded"):
        judge_reward(judge, retries=1, backoff=0.01)(grey(10, 20), ["p", "p"], groups=torch.tensor([0, 0]))
    judge.script = lambda body, n: (400, '{"error": "unknown model"}', 0.0)
    with pytest.raises(HTTPCallError, match=rf"{judge.base_url}/chat/completions.*400.*unknown model"):
        judge_reward(judge, retries=3, backoff=0.01)(grey(10, 20), ["p", "p"], groups=torch.tensor([0, 0]))


def test_a_body_that_is_not_a_chat_completion_is_an_error(judge):
    judge.script = lambda body, n: (201, '{"result": 1}', 0.0)
    with pytest.raises(ValueError, match="did not return a chat completion"):
        judge_reward(judge)(grey(10, 20), ["p", "p"], groups=torch.tensor([0, 0]))


def test_group_errors(judge):
    reward = judge_reward(judge)
    with pytest.raises(ValueError, match="needs groups"):
        reward(grey(10, 20), ["p", "p"])
    with pytest.raises(ValueError, match="at least 2 images per group; group 1 has 1"):
        reward(grey(10, 20, 30), ["p", "p", "q"], groups=torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="mixes different prompts"):
        reward(grey(10, 20), ["p", "q"], groups=torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="mode must be one of"):
        judge_reward(judge, mode="listwise")
    assert judge.requests == []


def test_api_key_comes_from_the_environment(judge, monkeypatch):
    monkeypatch.setenv("JUDGE_KEY", "sk-test")
    monkeypatch.setenv("EMPTY_KEY", "")
    with pytest.raises(ValueError, match=r"'EMPTY_KEY'.*empty"):
        judge_reward(judge, api_key_env="EMPTY_KEY")
    judge_reward(judge, api_key_env="JUDGE_KEY")(grey(10, 20), ["p", "p"], groups=torch.tensor([0, 0]))
    assert judge.headers[0]["Authorization"] == "Bearer sk-test"


class Pointwise:
    def __call__(self, images: torch.Tensor, prompts: list[str]) -> dict[str, torch.Tensor]:
        return {"score": images.mean(dim=(1, 2, 3))}


class GroupMean:
    """A groupwise reward: each image's brightness minus its group's mean."""

    groupwise = True

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, images: torch.Tensor, prompts: list[str], groups: torch.Tensor) -> dict[str, torch.Tensor]:
        self.seen.append(groups)
        x = images.mean(dim=(1, 2, 3))
        means = torch.stack([x[groups == g].mean() for g in groups])
        return {"score": x - means}


def test_reward_set_passes_groups_only_to_groupwise_rewards():
    group_mean = GroupMean()
    rewards = RewardSet({"plain": Pointwise(), "relative": group_mean}, {"plain": 1.0, "relative": 2.0})
    images, groups = grey(10, 30, 100, 200), torch.tensor([0, 0, 1, 1])
    total, parts = rewards(images, ["a", "a", "b", "b"], groups)  # Pointwise would fail if given groups=
    assert torch.equal(group_mean.seen[0], groups)
    torch.testing.assert_close(parts["relative"], torch.tensor([-10.0, 10.0, -50.0, 50.0]) / 255)
    torch.testing.assert_close(total, parts["plain"] + 2 * parts["relative"])
    with pytest.raises(ValueError, match="'relative' scores groups of images jointly and needs groups="):
        rewards(images, ["a", "a", "b", "b"])
    with pytest.raises(ValueError, match=r"groups must be a \[4\] integer tensor"):
        rewards(images, ["a", "a", "b", "b"], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    plain_only = RewardSet({"plain": Pointwise()}, {"plain": 1.0})
    torch.testing.assert_close(plain_only(images, ["a"] * 4)[0], parts["plain"])  # no groups needed


def _grey_png(path, level: int) -> str:
    Image.fromarray(np.full((8, 8, 3), level, dtype=np.uint8)).save(path)
    return str(path)


def test_the_edit_judge_shows_each_rows_sources_first_and_judges_by_them(judge, tmp_path):
    """A scripted judge of preservation: of two edits, the one whose grey level is closer to the (first) source's
    wins. Row a's source is 100, row b's has two sources (200 and 0): each request shows them first."""
    from flowrl.rewards import REWARDS
    from flowrl.rewards.vlm_edit_judge import EDIT_PAIRWISE

    def closer(body: dict[str, Any], n: int) -> Reply:
        source, first, second = shown_levels(body)[-3:]
        return 200, f"Image {1 if abs(first - source) < abs(second - source) else 2} is better", 0.0

    judge.script = closer
    sources = {"a": [_grey_png(tmp_path / "a.png", 100)], "b": [_grey_png(tmp_path / "b0.png", 0),
                                                                _grey_png(tmp_path / "b1.png", 200)]}  # fmt: skip
    images = grey(90, 200, 180, 40, 101)  # a: 90, 40, 101 (101 closest to 100, 40 farthest); b: 200, 180
    prompts = ["a", "b", "b", "a", "a"]
    spec = {"name": "vlm-edit-judge", "options": {"base_url": judge.base_url, "model": "fake", "timeout": 5.0}}
    inputs = {p: {"image": paths} for p, paths in sources.items()}
    _, parts = RewardSet.from_specs([spec])(images, prompts, groups=torch.tensor([0, 1, 1, 0, 0]), inputs=inputs)
    torch.testing.assert_close(parts["vlm-edit-judge"], torch.tensor([0.5, 1.0, 0.0, 0.0, 1.0]))
    for body in judge.requests:
        content = body["messages"][0]["content"]
        row = "b" if len(content) == 5 else "a"  # b's requests carry its 2 sources, a's its 1, then the 2 edits
        assert [part["type"] for part in content] == ["image_url"] * (len(sources[row]) + 2) + ["text"]
        assert shown_levels(body)[: len(sources[row])] == {"a": [100 / 255], "b": [0.0, 200 / 255]}[row]
        assert content[-1]["text"] == EDIT_PAIRWISE.replace("{prompt}", row)
    assert len(judge.requests) == 3 + 1 and REWARDS.facts("vlm-edit-judge").inputs == ("image",)


def test_the_pointwise_edit_judge_sends_source_then_edit_and_needs_the_rows(judge, tmp_path):
    judge.script = lambda body, n: (200, f"Score: {1 + round(shown_levels(body)[0] * 4)}", 0.0)  # from the source
    reward = make_reward("vlm-edit-judge", base_url=judge.base_url, model="fake", mode="pointwise", timeout=5.0)
    image = [[_grey_png(tmp_path / "s0.png", 0)], [_grey_png(tmp_path / "s1.png", 255)]]
    out = reward(grey(128, 128), ["x", "y"], image=image)
    torch.testing.assert_close(out["score"], torch.tensor([0.2, 1.0]))  # 1/5 and 5/5: the judge saw each source
    assert all(len(b["messages"][0]["content"]) == 3 for b in judge.requests)  # source, edit, instruction
    with pytest.raises(ValueError, match="needs the rows' image column"):
        reward(grey(128), ["x"])


def test_the_edit_judge_scores_trained_against_base_with_the_rows_sources(judge, tmp_path):
    """The run's summary meets each trained image with the base image of its prompt and seed as a group of two; the
    edit judge gets the rows' sources there too (a scripted judge preferring the brighter edit: trained wins)."""
    from types import SimpleNamespace

    from flowrl.core.checkpoint import plain
    from flowrl.core.inputs import PromptRow
    from flowrl.image.run import _head_to_head

    def brighter_edit(body: dict[str, Any], n: int) -> Reply:
        first, second = shown_levels(body)[-2:]  # after the source
        return 200, f"Image {1 if first > second else 2} is better", 0.0

    judge.script = brighter_edit
    spec = {"name": "vlm-edit-judge", "options": {"base_url": judge.base_url, "model": "fake", "timeout": 5.0}}
    inputs = {"a": {"image": [_grey_png(tmp_path / "a.png", 100)]}, "b": {"image": [_grey_png(tmp_path / "b.png", 9)]}}
    run = SimpleNamespace(rewards=RewardSet.from_specs([spec]), inputs=inputs)
    out = _head_to_head(run, ["a", "b"], base=grey(40, 40), trained=grey(90, 200))
    assert out["eval/vlm-edit-judge/trained_vs_base"]["mean"] == 1.0
    assert all(len(b["messages"][0]["content"]) == 4 for b in judge.requests)  # source, two edits, rubric
    # a prompt row keyed in a trainer's state saves and loads back (weights_only) as its key's text
    path = tmp_path / "state.pt"
    torch.save(plain({PromptRow("a", "a\x00k"): [1.0]}), path)
    assert torch.load(path, weights_only=True) == {"a": [1.0]}


def test_the_video_judge_shows_evenly_spaced_frames_in_order(judge):
    from flowrl.rewards import REWARDS, Scores

    # video k's frame f has grey level 10·(k + 1) + f: the frames shown, and their order, can be read back
    videos = torch.stack([grey(*[10 * (k + 1) + f for f in range(9)]) for k in range(2)])  # [2, 9, 3, 8, 8]

    def pointwise(body: dict[str, Any], n: int) -> Reply:
        levels = [round(v * 255) for v in shown_levels(body)]
        return 200, f"Score: {1 + (levels[0] // 10)}", 0.0

    judge.script = pointwise
    reward = make_reward("vlm-video-judge", base_url=judge.base_url, model="fake", mode="pointwise", frames=3)
    out = reward(videos, ["p", "q"])
    torch.testing.assert_close(out["score"], torch.tensor([2 / 5, 3 / 5]))
    shown = sorted([round(v * 255) for v in shown_levels(b)] for b in judge.requests)
    assert shown == [[10, 14, 18], [20, 24, 28]]  # frames 0, 4, 8 of each, in order
    assert "Score: N" in judge.requests[0]["messages"][0]["content"][-1]["text"]

    judge.requests.clear()
    judge.script = lambda body, n: (200, "Video 2 is better", 0.0)
    pairwise = make_reward("vlm-video-judge", base_url=judge.base_url, model="fake", frames=2, order="fixed")
    out = pairwise(videos, ["p", "p"], groups=torch.tensor([0, 0]))
    torch.testing.assert_close(out["score"], torch.tensor([0.0, 1.0], dtype=torch.float64))  # the one shown second
    assert [round(v * 255) for v in shown_levels(judge.requests[0])] == [10, 18, 20, 28]  # Video 1's, then Video 2's
    assert REWARDS.facts("vlm-video-judge").scores is Scores.VIDEOS
