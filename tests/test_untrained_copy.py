"""The cheaper path for passes whose log-probs are never trained (``flowrl.image.models.untrained``): which steps use
it, that it follows the live weights (LoRA merged, refreshed after every write), and that the trained transitions keep
a bitwise ratio of 1 under every precision setting."""

from __future__ import annotations

import pytest
import torch
from devices import bitwise_on_cpu, on_device
from tiny_runs import tiny_config

from flowrl.core.errors import ConfigError
from flowrl.image.models import untrained
from flowrl.image.trainer import sample, setup, train_step
from flowrl.samplers import replay_log_prob


@pytest.mark.parametrize("copy", ["none", "fp32", "bf16"])
@pytest.mark.parametrize("precision", ["no", "bf16"])
@pytest.mark.parametrize("finetune", ["lora", "full"])
def test_trained_transitions_replay_to_a_ratio_of_exactly_one(tiny_model, copy, precision, finetune):
    """Trained (stochastic) steps run the live module in sampling and in the update alike, so a replay with the
    weights unchanged gives the stored log-probs bit for bit, in any micro-batch."""
    args = [f"model.untrained_copy={copy}", f"model.mixed_precision={precision}", f"model.finetune={finetune}"]
    run = setup(tiny_config(tiny_model, *args))
    assert (run.policy.untrained is None) == (copy == "none")
    batch = sample(run, run.train_prompts[:2])
    tr = batch.rollout.transitions
    run.policy.train_mode(True)
    for rows in (torch.arange(tr.log_prob.numel()), torch.tensor([5, 0, 3])):
        part = tr.select(rows)
        log_prob, _ = replay_log_prob(run.policy.velocity, part, batch.cond, run.cfg.sampler.kind)
        assert bitwise_on_cpu(log_prob.detach(), part.log_prob), (copy, precision, finetune)


def test_only_untrained_steps_take_the_copy_and_it_follows_the_live_weights(tiny_model):
    run = setup(tiny_config(tiny_model, "model.untrained_copy=fp32", "model.lora_rank=2", "sampler.window_size=2"))
    policy = run.policy
    calls = {"untrained": 0}
    forward = policy.untrained.module.forward

    def counting(*args, **kwargs):  # passes through the copy
        calls["untrained"] += kwargs["hidden_states"].shape[0]
        return forward(*args, **kwargs)

    policy.untrained.module.forward = counting
    batch = sample(run, run.train_prompts[:2])  # 4 steps, an SDE window of 2: 2 ODE steps per image
    n = batch.rollout.samples.shape[0]
    assert calls["untrained"] == 2 * n and batch.rollout.nfe == 4 * n
    del policy.untrained.module.forward
    with torch.no_grad():  # LoRA B starts at zero: give the adapter a value, so the merge matters
        for p in run.params:
            p.normal_(0, 0.05)
    x, sigma = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0.9, 0.4])
    x, sigma = on_device(x, policy.device), on_device(sigma, policy.device)
    cond = policy.encode(["two red circles", "a blue square"]).as_dict()
    with torch.no_grad():
        live = policy.velocity(x, sigma, cond)
        merged = policy.ode_velocity(x, sigma, cond)  # refreshed: the weights were written
    torch.testing.assert_close(merged, live, atol=1e-5, rtol=1e-4)
    assert not any(type(m).__name__ == "Linear" and getattr(m, "merged", False) for m in policy.transformer.modules())
    train_step(run)  # an optimizer step writes the live weights: the copy refreshes at its next use
    with torch.no_grad():
        torch.testing.assert_close(policy.ode_velocity(x, sigma, cond), policy.velocity(x, sigma, cond), atol=1e-5,
                                   rtol=1e-4)  # fmt: skip
    bf16 = untrained.UntrainedCopy(policy.transformer, torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.module.parameters())
    with torch.no_grad(), bf16.serving(policy):
        low = policy.velocity(x, sigma, cond)
    assert policy.dtype == torch.float32 and low.dtype == torch.float32  # the policy is itself again
    assert (low - live).abs().max() < 0.05 and not torch.equal(low, live)
    with torch.enable_grad():  # a pass that records gradients never takes the copy
        assert torch.equal(policy.ode_velocity(x, sigma, cond), policy.velocity(x, sigma, cond))


def test_fast_bf16_is_read_from_the_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setattr(untrained, "_cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert untrained.fast_bf16(cpu) and untrained.copy_dtype("auto", cpu, lora=False) == torch.bfloat16
    monkeypatch.setattr(untrained, "_cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # bf16 emulated: slow
    assert not untrained.fast_bf16(cpu)
    assert untrained.copy_dtype("auto", cpu, lora=True) == torch.float32  # still worth merging the adapter
    assert untrained.copy_dtype("auto", cpu, lora=False) is None
    assert untrained.copy_dtype("bf16", cpu, lora=False) == torch.bfloat16
    assert untrained.copy_dtype("none", cpu, lora=True) is None


def test_a_copy_is_refused_with_sharded_weights(tiny_model):
    run = setup(tiny_config(tiny_model, "model.untrained_copy=none"))
    assert untrained.untrained_copy(run.policy, "auto", lora=True, sharded=True) is None
    with pytest.raises(ConfigError, match=r"model\.untrained_copy=bf16 needs whole weights"):
        untrained.untrained_copy(run.policy, "bf16", lora=True, sharded=True)
    with pytest.raises(ConfigError, match=r"model\.compile=true is not supported with FSDP"):
        untrained.compile_policy(run.policy, sharded=True)


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_model):
    """model.compile runs the live module and the untrained copy through torch.compile (CPU inductor here): the same
    samples and update as eager execution, up to the float error of fused kernels."""
    results = []
    for flag in ("false", "true"):
        run = setup(
            tiny_config(tiny_model, f"model.compile={flag}", "model.untrained_copy=fp32", "sampler.window_size=2")
        )
        batch = sample(run, run.train_prompts[:2])
        metrics = train_step(run)
        results.append((batch.rollout.samples, metrics["train/loss"], [p.detach().clone() for p in run.params]))
    (s0, l0, w0), (s1, l1, w1) = results
    torch.testing.assert_close(s1, s0, atol=1e-4, rtol=1e-4)
    assert l1 == pytest.approx(l0, rel=1e-3, abs=1e-6)
    for a, b in zip(w0, w1, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4)
