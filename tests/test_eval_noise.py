"""Evaluation noise: one tensor per (prompt, seed index), independent of batch, order, slicing and processes, paired
between the base and the trained policy, and never one of training's noise seeds."""

from __future__ import annotations

import random

import pytest
import torch

from flowrl.core.seeds import EVAL_STREAM, TRAIN_SEED_LIMIT, eval_noise_seed, eval_noise_seeds
from flowrl.image.generate import generate
from flowrl.image.models import SD3Policy
from flowrl.image.run import eval_pairs
from flowrl.image.toy_world import split_scenes
from flowrl.image.trainer import eval_share
from flowrl.recipes import load_config

HELD_OUT = [s.text for s in split_scenes()[1]]


def test_every_pair_gets_its_own_seed_and_noise():
    prompts = [p for p in HELD_OUT for _ in range(4)]
    indices = [k for _ in HELD_OUT for k in range(4)]
    seeds = eval_noise_seeds(prompts, indices)
    assert len(set(seeds)) == len(seeds) == 4 * 94
    assert all(EVAL_STREAM <= s < 2**64 for s in seeds)
    # the old scheme's failure: two prompts of one seed index started from the same tensor
    policy_noise = SD3Policy("assets/toy-sd3").initial_noise(seeds[:8], 32)
    flat = policy_noise.flatten(1)
    assert torch.corrcoef(flat).fill_diagonal_(0).abs().max() < 0.2  # [8, 3072] independent standard normals
    assert eval_noise_seed("a red circle", 0) != eval_noise_seed("a red circle", 1)
    assert eval_noise_seed("a red circle", 0) != eval_noise_seed("a red circles", 0)
    assert eval_noise_seed("a red circle", 3) == eval_noise_seed("a red circle", 3)  # a pure function
    with pytest.raises(ValueError, match="seed index"):
        eval_noise_seed("a red circle", -1)


@pytest.fixture(scope="module")
def toy_policy() -> SD3Policy:
    return SD3Policy("assets/toy-sd3")


def _images(policy, pairs: list[tuple[str, int]], batch_size: int = 64) -> dict[tuple[str, int], torch.Tensor]:
    prompts, indices = [p for p, _ in pairs], [k for _, k in pairs]
    out = generate(policy, prompts, indices, resolution=32, num_steps=2, batch_size=batch_size)
    return dict(zip(pairs, out, strict=True))


def test_an_image_depends_on_its_pair_only(toy_policy):
    cfg = load_config("configs/demo.yaml", ["eval.seeds_per_prompt=2"])
    prompts, indices = eval_pairs(cfg, HELD_OUT[:6])
    pairs = list(zip(prompts, indices, strict=True))
    whole = _images(toy_policy, pairs)
    shuffled = pairs[:]
    random.Random(0).shuffle(shuffled)
    reordered = _images(toy_policy, shuffled, batch_size=5)  # another order and other batches
    # eval.num_prompts keeps a prefix of the prompt list: its images are the whole list's
    cfg.eval.num_prompts = 2
    sliced = _images(toy_policy, list(zip(*eval_pairs(cfg, HELD_OUT[:6]), strict=True)))
    for pair, image in reordered.items():
        torch.testing.assert_close(image, whole[pair], atol=1e-5, rtol=0)
    assert len(sliced) == 4
    for pair, image in sliced.items():
        torch.testing.assert_close(image, whole[pair], atol=1e-5, rtol=0)
    # dealt out over 3 processes (whole prompt groups per process), every share reproduces its images
    for k in range(3):
        share = [pairs[i] for i in eval_share(prompts, k, 3)]
        for pair, image in _images(toy_policy, share).items():
            torch.testing.assert_close(image, whole[pair], atol=1e-5, rtol=0)


def test_base_and_trained_evaluation_use_the_same_noise_and_never_training_noise(tiny_model, tmp_path, monkeypatch):
    from tiny_runs import tiny_config

    from flowrl.image.models.family import FlowModel
    from flowrl.recipes import train

    calls: list[list[int]] = []
    original = FlowModel.initial_noise

    def recording(self, seeds, resolution):
        calls.append([int(s) for s in seeds])
        return original(self, seeds, resolution)

    monkeypatch.setattr(FlowModel, "initial_noise", recording)
    cfg = tiny_config(tiny_model, f"output.run_dir={tmp_path / 'run'}", "eval.seeds_per_prompt=2", "seed=7")
    train(cfg)
    evaluation = [c for c in calls if c[0] >= EVAL_STREAM]
    training = [c for c in calls if c[0] < EVAL_STREAM]
    assert len(evaluation) == 2 and len(training) == cfg.train.iterations  # before, after; one rollout each
    prompts, indices = eval_pairs(cfg, HELD_OUT)
    assert evaluation[0] == evaluation[1] == eval_noise_seeds(prompts, indices)  # paired: the same noise
    assert all(s < TRAIN_SEED_LIMIT for c in training for s in c)
    # training's largest seed, at the largest valid cfg.seed, stays below the limit: the streams cannot meet
    top = load_config(None, ["seed=999999999"]).seed
    assert ((top * 1_000_003 + 10**7) * 4096 + 4095) < TRAIN_SEED_LIMIT
    with pytest.raises(Exception, match="seed"):
        load_config(None, ["seed=1000000000"])


def test_text_sampling_with_row_seeds_is_exact_and_batch_independent():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flowrl.text.model import _GumbelRows, sample_completions

    # Gumbel-max with a row's own generator draws from softmax(logits): frequencies over 4000 rows
    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]]).expand(4000, 4)
    picks = _GumbelRows(range(4000))(None, logits).argmax(1)
    freq = torch.bincount(picks, minlength=4).double() / 4000
    torch.testing.assert_close(freq, logits[0].double().softmax(0), atol=0.025, rtol=0)  # SE of a frequency ≤ 0.008

    model = AutoModelForCausalLM.from_pretrained("assets/toy-lm").eval()
    tok = AutoTokenizer.from_pretrained("assets/toy-lm")
    prompts = ["12+34=", "57+68=", "9+90="]
    pairs = [(p, k) for p in prompts for k in range(3)]
    seeds = eval_noise_seeds([p for p, _ in pairs], [k for _, k in pairs])
    options = {"max_new_tokens": 6, "temperature": 1.5, "top_k": 0, "top_p": 1.0}
    together = sample_completions(model, tok, prompts, 3, row_seeds=seeds, **options).texts
    assert len(set(together)) > 3  # sampled at a high temperature, not greedy
    torch.manual_seed(123)  # the global RNG plays no part
    alone = [sample_completions(model, tok, [p], 1, row_seeds=[s], **options).texts[0] for (p, _), s in
             zip(pairs, seeds, strict=True)]  # fmt: skip
    assert alone == together
