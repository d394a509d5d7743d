"""The flow trainer end to end on a tiny SD3-architecture model saved to disk and loaded back."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch
from devices import on_device, velocity_on_cpu
from tiny_runs import MODES, tiny_config

from flowrl.image.models import SD3Policy
from flowrl.image.trainer import advantages, sample, setup, train_step
from flowrl.recipes import load_config
from flowrl.samplers import index_cond


def _snapshot(run) -> list[torch.Tensor]:
    return [p.detach().clone() for p in run.params]


def test_two_iterations_change_lora_with_finite_loss(tiny_model):
    run = setup(tiny_config(tiny_model, "loss.kl_coef=0.1"))
    before = _snapshot(run)
    metrics = [train_step(run), train_step(run)]
    for m in metrics:
        assert all(torch.isfinite(torch.tensor(v)) for v in m.values()), m
        assert m["reward/jpeg-compressibility"] < 0 and 0.0 <= m["reward/toy-geneval"] <= 1.0
        assert m["train/rows"] == 2 * 4 * 4  # every step of every sample is trained
    names = [n for n, p in run.policy.transformer.named_parameters() if p.requires_grad]
    still = {n for n, a, p in zip(names, before, run.params, strict=True) if torch.equal(a, p.detach())}
    # every LoRA tensor moves except the last block's context query: SD3's final block discards the
    # text stream's output (context_pre_only), so that projection gets no gradient
    assert still == {f"transformer_blocks.1.attn.add_q_proj.lora_{m}.default.weight" for m in "AB"}
    # one optimizer step per iteration: every micro-batch is replayed on-policy, so the ratio is 1
    for m in metrics:
        assert m["ratio_min"] == pytest.approx(1.0, abs=1e-4) and m["ratio_max"] == pytest.approx(1.0, abs=1e-4)
    # LoRA starts at zero (policy == reference); after one update the KL to the reference is positive
    assert metrics[0]["kl"] == pytest.approx(0.0, abs=1e-10)
    assert metrics[1]["kl"] > 1e-8


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_sampler_mode_trains(tiny_model, mode):
    run = setup(tiny_config(tiny_model, f"sampler.mode={mode}", *MODES[mode]))
    before = _snapshot(run)
    batch = sample(run, run.train_prompts[:2])
    assert batch.rollout.samples.shape == (2 * 4, 3, 32, 32)
    assert batch.rewards.shape == (8, 2)
    rows, _ = advantages(run, batch)
    trained = len(batch.rollout.transitions) if mode != "ode" else 8 * 2  # ode + nft: 2 levels per sample
    assert rows.advantages.shape == rows.mask.shape == (trained,)
    if mode == "singular":
        assert len(batch.rollout.transitions) == 8 and batch.granular.shape == (1, 8, 2)
    run.iteration = 0
    m = train_step(run)
    assert m["train/rows"] > 0
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))


def test_replay_reproduces_rollout_log_probs(tiny_model):
    run = setup(tiny_config(tiny_model))
    batch = sample(run, run.train_prompts[:2])
    from flowrl.samplers import replay_log_prob

    tr = batch.rollout.transitions
    with torch.no_grad():
        log_prob, mean = replay_log_prob(run.policy.velocity, tr, batch.cond, "flow_sde")
    torch.testing.assert_close(log_prob, tr.log_prob, atol=1e-4, rtol=0)
    torch.testing.assert_close(mean, tr.mean, atol=1e-5, rtol=0)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_cli_run_writes_summary_gallery_tensorboard_and_loadable_lora(tiny_model, tmp_path, capsys):
    from flowrl.cli import main

    run_dir = tmp_path / "run"
    args = [
        "train",
        f"output.run_dir={run_dir}",
        f"model.path={tiny_model}",
        "model.lora_rank=4",
        "model.lora_alpha=8",  # scale 2: the saved LoRA must carry its alpha for the pipeline to reproduce it
    ]
    args += ["sampler.num_steps=4", "train.iterations=2", "train.prompts_per_step=2", "train.group_size=4"]
    args += ["train.lr=1e-2", "eval.num_prompts=3", "eval.seeds_per_prompt=1", "eval.num_steps=3"]
    args += ["eval.gallery_prompts=2", "output.progress=false"]
    args += ["rewards=[{name: toy-geneval}, {name: jpeg-compressibility, weight: 0.1}]"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("eval_strict_before", "eval_strict_after"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["eval_reward_before"] < 0 and summary["eval_reward_after"] < 0  # 0.1 · −(JPEG kB) dominates
    assert summary["num_eval_samples"] == 3 and summary["train_steps"] == 2 and summary["seed"] == 0
    assert summary["config"]["train"]["iterations"] == 2 and summary["wall_time_s"] > 0
    assert (run_dir / "gallery" / "index.html").is_file() and (run_dir / "gallery" / "contact_sheet.png").is_file()
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(run_dir / "tb"))
    lora = run_dir / "checkpoints" / "final" / "lora"
    assert (lora / "pytorch_lora_weights.safetensors").is_file()
    # diffusers writes the LoRA file 0600; the run folder's group reads it like the rest (umask 022 here)
    modes = {os.stat(p).st_mode & 0o777 for p in (lora / "pytorch_lora_weights.safetensors", run_dir / "summary.json")}
    assert modes == {0o666 & ~_umask()}
    assert (run_dir / "checkpoints" / "final" / "trainer_state.pt").is_file()

    # the LoRA loads into a diffusers pipeline and reproduces the trained network
    from diffusers import StableDiffusion3Pipeline

    trained = setup(load_config(str(run_dir / "config.yaml")))
    state = torch.load(run_dir / "checkpoints" / "final" / "trainer_state.pt", weights_only=True)
    with torch.no_grad():
        for p, saved in zip(trained.params, state["params"], strict=True):
            p.copy_(saved)
    fresh = SD3Policy(tiny_model)
    pipe = StableDiffusion3Pipeline(
        transformer=fresh.transformer,
        scheduler=fresh.scheduler,
        vae=None,
        text_encoder=fresh.encoders[0][0],
        tokenizer=fresh.encoders[0][1],
        text_encoder_2=None,
        tokenizer_2=None,
        text_encoder_3=None,
        tokenizer_3=None,
    )
    pipe.load_lora_weights(str(lora))
    cond = fresh.encode(["two red circles"]).as_dict()
    x, sigma = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    with torch.no_grad():
        v_loaded = fresh.velocity(x, sigma, cond)
        v_trained = velocity_on_cpu(trained.policy, x, sigma, cond)
        v_base = SD3Policy(tiny_model).velocity(x, sigma, cond)
    torch.testing.assert_close(v_loaded, v_trained, atol=1e-5, rtol=1e-5)
    assert (v_loaded - v_base).abs().max() > 1e-4


def test_full_finetuning_trains_every_weight_and_saves_a_loadable_transformer(tiny_model, tmp_path):
    from diffusers import SD3Transformer2DModel

    from flowrl.image.run import save_checkpoint

    run = setup(tiny_config(tiny_model, "model.finetune=full"))
    assert len(run.params) == len(list(run.policy.transformer.parameters()))
    before = _snapshot(run)
    train_step(run)
    moved = sum(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))
    assert moved > 0.9 * len(run.params)
    save_checkpoint(run, str(tmp_path / "ckpt"))
    loaded = SD3Transformer2DModel.from_pretrained(str(tmp_path / "ckpt" / "full"))
    for (name, p), q in zip(run.policy.transformer.named_parameters(), loaded.parameters(), strict=True):
        torch.testing.assert_close(p.detach().cpu(), q, msg=name)
    assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no temporary folder left behind


def test_full_finetuning_keeps_a_frozen_reference_for_kl(tiny_model):
    """As the text recipe does: with model.finetune=full a KL (or AWM reference) term is measured against a frozen
    copy of the base, which stays the base while the trained weights move."""
    from flowrl.core.weights import reference_policy

    run = setup(tiny_config(tiny_model, "model.finetune=full", "loss.kl_coef=0.5"))
    assert run.policy.reference is not None and not any(p.requires_grad for p in run.policy.reference.parameters())
    x, sigma = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0.9, 0.4])
    x, sigma = on_device(x, run.policy.device), on_device(sigma, run.policy.device)
    cond = run.policy.encode(["two red circles", "a blue square"]).as_dict()
    with torch.no_grad():
        base = run.policy.velocity(x, sigma, cond)
    m = train_step(run)
    assert m["kl"] == pytest.approx(0.0, abs=1e-10)  # the first update starts at the reference
    m = train_step(run)
    assert m["kl"] > 0  # the trained weights moved away from the frozen copy
    with reference_policy(run.policy):
        torch.testing.assert_close(run.policy.velocity(x, sigma, cond), base)
    with torch.no_grad():
        assert (run.policy.velocity(x, sigma, cond) - base).abs().max() > 1e-6
    assert run.policy.transformer is not run.policy.reference  # the live network is back after the block
    awm = setup(tiny_config(tiny_model, "model.finetune=full", "loss.name=awm", "loss.velocity_kl_coef=0.5"))
    assert awm.policy.reference is not None
    train_step(awm)
    assert train_step(awm)["ref_reg"] > 0


def test_classifier_free_guidance_is_the_policy_in_sampling_and_replay(tiny_model):
    from flowrl.samplers import replay_log_prob

    run = setup(tiny_config(tiny_model, "model.cfg_scale=3.0"))
    batch = sample(run, run.train_prompts[:2])
    assert "neg_embeds" in batch.cond
    tr = batch.rollout.transitions
    with torch.no_grad():
        guided, _ = replay_log_prob(run.policy.velocity, tr, batch.cond, "flow_sde")
        run.policy.cfg_scale = 1.0
        plain, _ = replay_log_prob(run.policy.velocity, tr, batch.cond, "flow_sde")
    torch.testing.assert_close(guided, tr.log_prob, atol=1e-4, rtol=0)
    assert (plain - tr.log_prob).abs().max() > 1e-3  # the unguided network is a different policy


def test_ema_weights_are_used_for_evaluation_and_restored_after(tiny_model):
    from flowrl.image.trainer import evaluate

    run = setup(tiny_config(tiny_model, "train.ema_decay=0.5"))
    init = _snapshot(run)
    train_step(run)  # one optimizer step: avg = 0.5·init + 0.5·new
    live = _snapshot(run)
    for avg, a, b in zip(run.ema.shadow, init, live, strict=True):
        torch.testing.assert_close(avg, 0.5 * a + 0.5 * b)
    assert any(not torch.equal(avg, b) for avg, b in zip(run.ema.shadow, live, strict=True))
    images_ema, _ = evaluate(run, ["two red circles"], [0])
    assert all(torch.equal(a, p.detach()) for a, p in zip(live, run.params, strict=True))  # restored
    run.ema = None
    images_live, _ = evaluate(run, ["two red circles"], [0])
    assert not torch.equal(images_ema, images_live)


def test_awm_trains_on_final_samples(tiny_model):
    from flowrl.image.objectives import OBJECTIVES

    run = setup(tiny_config(tiny_model, "loss.name=awm", "loss.velocity_kl_coef=0.5", "sampler.window_size=1"))
    before = _snapshot(run)
    batch = sample(run, run.train_prompts[:2])
    train, _ = advantages(run, batch)
    adv, mask = train.advantages, train.mask
    assert adv.shape == mask.shape == train.sigma.shape == (8,)  # one row per final sample, one level each
    levels = run.policy.sigmas(4, 32)[:-1].float()
    assert all(bool((levels == s).any()) for s in train.sigma)  # a level of the sampling schedule
    # the loss rebuilt by hand: x_σ = (1 − σ)·x0 + σ·ε with ε from the row's seed, target ε − x0
    rows = torch.tensor([5, 1, 6])
    out = OBJECTIVES.get("samples")(run, batch, rows, train)
    x0 = batch.rollout.samples[rows]
    sigma = train.sigma[rows].to(x0)
    eps = torch.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(int(train.noise_seed[r])))
                       for r in rows]).to(x0)  # fmt: skip
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
    with torch.no_grad():
        v = run.policy.velocity(x_t, sigma, index_cond(batch.cond, batch.rollout.cond_index[rows]))
    expected = (adv[rows].to(v) * ((v - (eps - x0)) ** 2).flatten(1).mean(1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert out.metrics["ref_reg"] == pytest.approx(0.0, abs=1e-12)  # LoRA starts at zero: policy = reference
    m = train_step(run)
    assert m["train/rows"] == 8 and math.isfinite(m["fm_loss"])
    assert any(not torch.equal(a, p.detach()) for a, p in zip(before, run.params, strict=True))
    assert train_step(run)["ref_reg"] > 0


def test_groupwise_rewards_are_evaluated_trained_against_base():
    from types import SimpleNamespace

    from flowrl.image.run import _head_to_head

    class BrighterWins:
        """Pairwise: 1 to the brighter image of each group of two, 0.5 each on a tie."""

        groupwise = True

        def __call__(self, images, prompts, groups):
            light = images.mean(dim=(1, 2, 3))
            score = torch.empty(len(prompts))
            for g in groups.unique():
                i, j = (groups == g).nonzero().flatten().tolist()
                score[i] = 0.5 if light[i] == light[j] else float(light[i] > light[j])
                score[j] = 1 - score[i]
            return {"score": score}

    base = torch.full((4, 3, 2, 2), 0.5)
    trained = torch.tensor([0.9, 0.7, 0.2, 0.5]).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    from flowrl.rewards import RewardSet

    rewards = RewardSet({"judge": BrighterWins(), "plain": lambda im, p: {}}, {"judge": 1.0, "plain": 1.0})
    run = SimpleNamespace(rewards=rewards, inputs={})
    out = _head_to_head(run, ["a", "b", "c", "d"], base, trained)
    assert list(out) == ["eval/judge/trained_vs_base"]  # only the groupwise reward
    assert out["eval/judge/trained_vs_base"]["mean"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def test_same_noise_shares_the_initial_noise_within_a_group(tiny_model):
    for same in (False, True):
        run = setup(tiny_config(tiny_model, f"sampler.same_noise={str(same).lower()}"))
        batch = sample(run, run.train_prompts[:2])
        first = batch.rollout.transitions.select(batch.rollout.transitions.step == 0)
        starts = first.x[first.group_id.argsort(stable=True)].view(2, 4, -1)
        equal = all(torch.equal(g[0], g[k]) for g in starts for k in range(1, 4))
        assert equal == same
        assert not torch.equal(starts[0, 0], starts[1, 0])  # prompts still get different noise
        if same:  # the SDE noise still spreads a group's samples apart
            samples = batch.rollout.samples.view(2, 4, -1)
            assert not torch.equal(samples[0, 0], samples[0, 1])


def test_step_subset_trains_a_random_fraction_of_each_samples_steps():
    from flowrl.samplers.modes import step_subset

    owner = torch.tensor([0] * 5 + [1] * 5 + [-1, -1] + [2])
    mask = torch.ones(13, dtype=torch.bool)
    mask[9] = False  # sample 1 has 4 trainable steps
    kept = step_subset(mask, owner, 0.6, torch.Generator().manual_seed(0))
    # int(5 × 0.6) = 3, int(4 × 0.6) = 2, shared prefixes kept, max(1, int(1 × 0.6)) = 1
    assert [int(kept[owner == k].sum()) for k in (0, 1, -1, 2)] == [3, 2, 2, 1]
    assert not (kept & ~mask).any()
    again = step_subset(mask, owner, 0.6, torch.Generator().manual_seed(0))
    other = step_subset(mask, owner, 0.6, torch.Generator().manual_seed(1))
    assert torch.equal(kept, again) and not torch.equal(kept, other)
    assert step_subset(mask, owner, 1.0, torch.Generator()) is mask


def test_timestep_fraction_and_shift_reach_the_trainer(tiny_model):
    run = setup(tiny_config(tiny_model, "train.timestep_fraction=0.5", "sampler.shift=3"))
    torch.testing.assert_close(run.policy.sigmas(4, 32), torch.tensor([1.0, 0.9, 0.75, 0.5, 0.0], dtype=torch.float64))
    m = train_step(run)
    assert m["sampler/transitions"] == 2 * 4 * 4 and m["train/rows"] == 2 * 4 * 2
    from flowrl.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"timestep_fraction < 1 picks trained steps; loss\.name=awm"):
        tiny_config(tiny_model, "train.timestep_fraction=0.5", "loss.name=awm", "sampler.window_size=1")
