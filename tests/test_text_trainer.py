"""The text GRPO backend on tiny random causal LMs saved to disk and loaded back with ``from_pretrained``."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from tiny_runs import text_config

from flowrl.text.model import completion_mask, token_log_probs
from flowrl.text.trainer import score, setup, train_step

LOSSES = ["grpo", "bnpo", "dr-grpo", "dapo", "gspo"]
#: the text recipe logs the image recipe's names (one namespace) ...
METRICS = (
    "reward/mean", "reward/std", "reward/zero_std_frac", "reward/correct", "reward/well_formed/std", "kl",
    "train/entropy", "completions/mean_length", "completions/clipped_ratio", "clip_frac_high", "train/num_tokens",
    "train/loss", "train/grad_norm", "train/lr",
)  # fmt: skip
#: ... and TRL's where a TRL user reads them (output.metric_names: trl, which a trl: section sets)
TRL_METRICS = (
    "reward", "reward_std", "frac_reward_zero_std", "rewards/correct/mean", "rewards/well_formed/std", "kl",
    "entropy", "completions/mean_length", "completions/clipped_ratio", "clip_ratio/region_mean", "num_tokens",
    "loss", "grad_norm", "lr",
)  # fmt: skip


def _tiny(kind: str):
    """A tiny random causal LM of a real architecture: Llama (rotary positions) or GPT-2 (learned positions)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "llama":
        cfg = LlamaConfig(
            vocab_size=32, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
        )  # fmt: skip
        return LlamaForCausalLM(cfg)
    return GPT2LMHeadModel(GPT2Config(vocab_size=32, n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_shared_prefix_forward_has_the_plain_forwards_log_probs_and_gradients(kind):
    model = _tiny(kind).eval()
    g = torch.Generator().manual_seed(0)
    prompt_ids = torch.randint(3, 32, (3, 6), generator=g)
    prompt_mask = torch.ones(3, 6, dtype=torch.long)
    prompt_mask[1, :2] = prompt_mask[2, :1] = 0  # left padding
    prompt_ids[prompt_mask == 0] = 0
    ids = torch.randint(3, 32, (12, 5), generator=g)
    ids[0, 2] = ids[5, 0] = 1  # early EOS: masked tails
    mask, _ = completion_mask(ids, 1)
    index = torch.tensor([2, 0, 1, 0, 2, 1, 1, 0, 2, 2, 0, 1])  # groups interleaved, as in a shuffled micro-batch
    weights = torch.randn(12, 5, generator=g)
    results = {}
    for shared in (False, True):
        model.zero_grad()
        log_prob, entropy = token_log_probs(
            model, prompt_ids, prompt_mask, ids, mask, index, temperature=0.7, shared_prefix=shared
        )
        (log_prob * weights * mask).sum().backward()
        results[shared] = (log_prob.detach() * mask, entropy * mask, [p.grad.clone() for p in model.parameters()])
    plain, shared = results[False], results[True]
    torch.testing.assert_close(shared[0], plain[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(shared[1], plain[1], atol=1e-5, rtol=0)
    for a, b in zip(shared[2], plain[2], strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # a log-prob is a log-probability: the completion tokens' probabilities are in (0, 1]
    assert (plain[0] <= 0).all() and (plain[0][mask.bool()] < 0).any()


@pytest.mark.parametrize("loss", LOSSES)
def test_micro_batches_give_the_gradient_of_the_whole_step(lm_dir, loss):
    """One optimizer step over 12 rows in micro-batches of 5 (5 + 5 + 2) has the gradient of the loss
    computed on all 12 rows at once, whatever the loss divides by (rows, tokens, global tokens)."""
    from flowrl.core.losses import LossInputs, compute_loss
    from flowrl.text.trainer import _log_probs, generate, update

    run = setup(text_config(lm_dir, f"loss.name={loss}", "loss.kl_coef=0.1", "train.max_grad_norm=0"))
    with torch.no_grad():
        for p in run.params:
            p.normal_(0, 0.1)
    batch = generate(run, run.train_rows[:3])
    adv = torch.linspace(-1, 1, 12)
    captured = []
    run.optimizer.step = lambda *a, **k: captured.append([p.grad.clone() for p in run.params])
    update(run, batch, adv)
    del run.optimizer.step
    rows = torch.cat([torch.arange(12)[batch.completions.index == g] for g in batch.completions.index.unique()])
    run.optimizer.zero_grad()
    log_prob, _ = _log_probs(run, run.model, batch.completions, torch.arange(12))
    with torch.no_grad(), run.model.disable_adapter():
        ref, _ = _log_probs(run, run.model, batch.completions, torch.arange(12))
    mask = batch.completions.completion_mask.bool()
    inputs = LossInputs(
        log_prob=log_prob, old_log_prob=log_prob.detach(), advantages=adv, mask=mask, ref_log_prob=ref,
        token_count=float(mask.sum()),
    )  # fmt: skip
    compute_loss(loss, inputs, run.cfg.loss).loss.backward()
    assert len(captured) == 1 and len(rows) == 12
    for got, p in zip(captured[0], run.params, strict=True):
        torch.testing.assert_close(got, p.grad, atol=1e-7, rtol=1e-4)
    assert max(p.grad.abs().max().item() for p in run.params) > 1e-5


def test_rewards_none_is_left_out_and_bad_outputs_name_the_reward(lm_dir):
    run = setup(text_config(lm_dir))

    def sometimes(prompts, completions, **_):
        return [None if i % 2 else 1.0 for i in range(len(prompts))]

    run.rewards = [("sometimes", sometimes, 2.0), ("correct", run.rewards[0][1], 1.0)]
    rows = [{"prompt": "1+2=", "answer": "3"}, {"prompt": "2+2=", "answer": "4"}]
    r = score(run, rows, ["3", "5"])
    assert math.isnan(r[1, 0]) and r[0].tolist() == [1.0, 1.0]
    from flowrl.text.trainer import weighted_total

    assert weighted_total(run, r).tolist() == [3.0, 0.0]  # 2·1 + 1·1; the None is skipped: 1·0
    for fn, message in (
        (lambda prompts, completions, **_: [1.0], r"reward 'bad' returned 1 values for 2 completions"),
        (lambda prompts, completions, **_: ["1", "2"], r"reward 'bad' must return floats or None, got '1'"),
        (lambda prompts, completions, **_: 1 / 0, r"reward 'bad' raised ZeroDivisionError"),
    ):
        run.rewards = [("bad", fn, 1.0)]
        with pytest.raises((ValueError, TypeError, RuntimeError), match=message):
            score(run, rows, ["3", "5"])


@pytest.mark.parametrize("loss", LOSSES)
def test_two_iterations_move_the_lora_with_one_namespace_of_metrics(lm_dir, loss):
    from flowrl.text.trl import trl_metric_names

    run = setup(text_config(lm_dir, f"loss.name={loss}", "loss.kl_coef=0.05", "train.inner_epochs=2"))
    before = [p.detach().clone() for p in run.params]
    metrics = [train_step(run), train_step(run)]
    moved = sum(not torch.equal(a, p) for a, p in zip(before, run.params, strict=True))
    assert moved == len(run.params), (moved, len(run.params))
    for m in metrics:
        for key in METRICS:
            assert key in m and math.isfinite(m[key]), (key, m)
        trl = trl_metric_names(m, ["correct", "well_formed"])
        for key in TRL_METRICS:
            assert key in trl and math.isfinite(trl[key]), (key, trl)
        assert trl["clip_ratio/region_mean"] == m["clip_frac_low"] + m["clip_frac_high"]
    assert metrics[1]["train/num_tokens"] > metrics[0]["train/num_tokens"] > 0
    # the first pass of an iteration is on-policy; the second pass sees ratios away from 1
    assert metrics[0]["kl"] >= 0 and metrics[1]["kl"] > 0


def test_command_line_text_run_writes_the_run_folder_and_a_loadable_adapter(lm_dir, tmp_path, monkeypatch):
    import yaml
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from flowrl.cli import main
    from flowrl.core.monitor import TrainingMonitor
    from flowrl.text.trainer import _log_probs, generate

    seen: list[dict[str, float]] = []  # what the training loop fed the reward-hacking monitor
    update = TrainingMonitor.update
    monkeypatch.setattr(TrainingMonitor, "update", lambda self, m, i=0: seen.append(m) or update(self, m, i))
    preset = tmp_path / "text.yaml"
    preset.write_text(yaml.safe_dump({"backend": "text", "model": {"path": lm_dir, "lora_rank": 4}}))
    run_dir = tmp_path / "run"
    args = ["generation.max_new_tokens=4", "train.iterations=2", "train.prompts_per_step=2", "train.group_size=4"]
    args += ["train.lr=1e-2", "eval.num_prompts=3", "output.progress=false", f"output.run_dir={run_dir}"]
    args += ["eval.watch_rewards=[{name: 'toy-text:well_formed'}]"]  # scored on the completions, never trained
    assert main(["train", "--config", str(preset), *args]) == 0
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["backend"] == "text" and summary["train_steps"] == 2 and summary["num_eval_samples"] == 3
    assert summary["training_warnings"] == [] and len(seen) == 2  # the monitors run for text too
    for m in seen:
        assert 0 <= m["watch/well_formed"] <= 1 and 0.25 <= m["monitor/diversity"] <= 1 and "reward/mean" in m
    for key in ("eval_reward_before", "eval_reward_after", "eval_reward_gain", "eval/correct"):
        assert key in summary
    assert (run_dir / "samples.md").read_text().count("\n") == 2 + 3
    trained = setup(text_config(lm_dir))
    state = torch.load(run_dir / "checkpoints" / "final" / "trainer_state.pt", weights_only=True)
    with torch.no_grad():
        for p, saved in zip(trained.params, state["params"], strict=True):
            p.copy_(saved)
    loaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(lm_dir), run_dir / "checkpoints/final/lora"
    )
    batch = generate(trained, trained.train_rows[:2])
    rows = torch.arange(8)
    with torch.no_grad():
        torch.testing.assert_close(
            _log_probs(trained, loaded, batch.completions, rows)[0],
            _log_probs(trained, trained.model, batch.completions, rows)[0],
        )


def test_advantages_and_reward_metrics_by_hand(lm_dir):
    from flowrl.text.model import Completions
    from flowrl.text.trainer import TextBatch, advantages

    run = setup(text_config(lm_dir, "train.group_size=4", "advantage.std_unbiased=true", "advantage.eps=1e-4"))
    run.rewards = [("a", None, 1.0), ("b", None, 2.0)]
    nan = math.nan
    rewards = torch.tensor(
        [[1, nan], [0, nan], [1, nan], [1, nan], [0, 0], [0, 0], [0, 0], [nan, nan]], dtype=torch.float32
    )
    index = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    c = Completions(
        torch.zeros(2, 1), torch.ones(2, 1), torch.zeros(8, 1), torch.ones(8, 1), index, index > 9, [""] * 8
    )
    adv, m = advantages(run, TextBatch(c, [{"prompt": str(int(i))} for i in index], rewards))
    # group 0: r = 1, 0, 1, 1 (the NaN column skipped), mean 0.75, std (Bessel) 0.5; group 1: all 0 (row 7 unscored)
    torch.testing.assert_close(adv[:4], torch.tensor([0.25, -0.75, 0.25, 0.25]) / (0.5 + 1e-4))
    assert adv[4:].tolist() == [0.0] * 4
    totals = torch.tensor([1.0, 0, 1, 1, 0, 0, 0])  # row 7 is left out of the statistics
    assert m["reward/mean"] == pytest.approx(totals.mean().item())
    assert m["reward/std"] == pytest.approx(totals.std().item())
    assert m["reward/zero_std_frac"] == 0.5
    assert m["reward/a"] == pytest.approx(3 / 7) and m["reward/b"] == 0.0


def test_distinct_share_by_hand_and_a_trained_watch_reward_is_refused(lm_dir):
    from flowrl.core.errors import ConfigError
    from flowrl.core.monitor import distinct_share

    # prompt 0: a, a, b (2 of 3 distinct); prompt 1: c, d (all); prompt 2: one completion (no pair: left out)
    assert distinct_share([0, 0, 0, 1, 1, 2], ["a", "a", "b", "c", "d", "e"]) == pytest.approx((2 / 3 + 1) / 2)
    assert math.isnan(distinct_share([0, 1], ["a", "a"]))
    with pytest.raises(ConfigError, match=r"eval.watch_rewards\[0\].name: 'toy-text:correct' is trained on"):
        text_config(lm_dir, "eval.watch_rewards=[{name: 'toy-text:correct'}]")


def test_python_dataset_and_reward_functions_with_full_finetuning_and_a_frozen_reference(lm_dir, tmp_path):
    from flowrl.text.recipe import train_and_report

    rows = [{"prompt": f"{a}+1=", "target": str(a + 1)} for a in range(10)]
    seen: list[list[str]] = []

    def exact(prompts, completions, target, **_):
        seen.append(list(target))
        return [float(c == t) for c, t in zip(completions, target, strict=True)]

    def short(prompts, completions, **_):
        return [1.0 if len(c) <= 2 else None for c in completions]

    cfg = text_config(
        lm_dir, "model.finetune=full", "loss.kl_coef=0.1", "train.iterations=2", "train.lr=1e-3",
        "eval.enabled=false", f"output.run_dir={tmp_path / 'run'}",
    )  # fmt: skip
    run_dir = train_and_report(cfg, dataset=rows, reward_funcs=[exact, short])
    assert seen and all(t in {r["target"] for r in rows} for batch in seen for t in batch)
    state = torch.load(f"{run_dir}/checkpoints/final/trainer_state.pt", weights_only=True)
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(f"{run_dir}/checkpoints/final/full")
    base = AutoModelForCausalLM.from_pretrained(lm_dir)
    for p, q in zip(saved.parameters(), state["params"], strict=True):
        torch.testing.assert_close(p, q)
    assert any(not torch.equal(p, b) for p, b in zip(saved.parameters(), base.parameters(), strict=True))


def test_a_lora_target_that_matches_nothing_is_named_as_in_the_flow_recipe(lm_dir):
    from flowrl.text.trainer import setup

    with pytest.raises(ValueError, match=r"model.lora_targets \['nope_proj'\] match no module of LlamaForCausalLM"):
        setup(text_config(lm_dir, "model.lora_targets=[q_proj, nope_proj]"))


def test_non_finite_weights_are_never_saved(lm_dir, tmp_path):
    from flowrl.text.run import save_checkpoint
    from flowrl.text.trainer import setup

    run = setup(text_config(lm_dir))
    with torch.no_grad():
        run.params[0][0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="non-finite trainable weights at iteration 0"):
        save_checkpoint(run, str(tmp_path / "ckpt"))
    assert not os.listdir(tmp_path)


def test_setting_up_lora_shows_no_library_deprecation(lm_dir):
    import warnings

    from flowrl.text.trainer import setup

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        setup(text_config(lm_dir))
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_prompts_cache_computed_once_samples_the_same_completions(kind, monkeypatch):
    from flowrl.text import model as causal_lm
    from flowrl.text.world import build_tokenizer

    tokenizer, model = build_tokenizer(), _tiny(kind).eval()
    prompts = ["12+34=", "5=", "7+8=", "9"]  # left padding to 6 tokens; "9" has one: its cached part is all padding
    runs, prefills, prefill = {}, [], causal_lm._shared_prefill
    monkeypatch.setattr(causal_lm, "_shared_prefill", lambda *a: prefills.append(1) or prefill(*a))
    for shared in (True, False):
        if not shared:
            monkeypatch.setattr(causal_lm, "_dynamic", lambda model: False)
        for seeds in (None, list(range(4 * 5))):  # training's global RNG; evaluation's generator per row
            c = causal_lm.sample_completions(model, tokenizer, prompts, 5, max_new_tokens=6, temperature=1.0,
                                             generator_seed=7, row_seeds=seeds)  # fmt: skip
            runs[shared, seeds is None] = c.completion_ids
    assert len(prefills) == 2  # the two shared runs used it
    for per_row in (True, False):
        assert torch.equal(runs[True, per_row], runs[False, per_row])
    assert len({tuple(r) for r in runs[True, True].tolist()}) > 4  # sampled, not all alike
    calls = []
    monkeypatch.setattr(causal_lm, "_dynamic", lambda model: True)
    monkeypatch.setattr(causal_lm, "_shared_prefill", lambda *a: calls.append(a) or None)
    causal_lm.sample_completions(model, tokenizer, prompts, 1, max_new_tokens=2)  # one row per prompt: no sharing
    assert calls == []


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_log_probs_are_those_of_the_distribution_generate_sampled_from(kind):
    """Left-padded prompts: the loss's log-probs equal generate's own step scores, for rotary (Llama) and learned
    absolute positions (GPT-2), on both log-prob paths."""
    from flowrl.text.model import completion_mask, token_log_probs, tokenize_prompts
    from flowrl.text.world import build_tokenizer

    tokenizer, model = build_tokenizer(), _tiny(kind).eval()
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, ["12+34=", "5=", "9"], torch.device("cpu"))
    index = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.manual_seed(0)
    with torch.no_grad():
        out = model.generate(input_ids=prompt_ids[index], attention_mask=prompt_mask[index], max_new_tokens=5,
                             do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=0, eos_token_id=2,
                             output_scores=True, return_dict_in_generate=True)  # fmt: skip
    ids = out.sequences[:, prompt_ids.shape[1] :]
    mask, _ = completion_mask(ids, tokenizer.eos_token_id)
    sampled = torch.stack(out.scores, 1).log_softmax(-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    for shared in (True, False):
        with torch.no_grad():
            log_prob, _ = token_log_probs(model, prompt_ids, prompt_mask, ids, mask, index, shared_prefix=shared)
        torch.testing.assert_close(log_prob[mask.bool()], sampled[mask.bool()], atol=1e-5, rtol=1e-5)
