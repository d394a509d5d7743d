"""DiffusionNFT: the loss by hand, its gradient's direction, the old policy's decay and update, the trainer end to
end and its LoRA in diffusers. Reference: NVlabs/DiffusionNFT scripts/train_nft_sd3.py."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from devices import velocity_on_cpu

from flowrl.core.errors import ConfigError
from flowrl.core.losses import LossConfig, LossInputs, NftOptions, compute_loss
from flowrl.core.losses.nft import nft_decay, nft_weight
from flowrl.recipes import load_config

NFT_ARGS = ["loss.name=nft", "sampler.mode=ode", "train.timestep_fraction=0.5"]


def _inputs(adv: list[float], v: torch.Tensor, v_old: torch.Tensor, x_t: torch.Tensor, x0: torch.Tensor,
            sigma: list[float]) -> LossInputs:  # fmt: skip
    sigma_t, adv_t = torch.tensor(sigma, device=v.device), torch.tensor(adv, device=v.device)
    return LossInputs(advantages=adv_t, v_pred=v, v_old=v_old, x_t=x_t, x0=x0, sigma=sigma_t)


def test_loss_by_hand_on_two_rows():
    # row 0: 2 elements, t = 0.5, β = 0.5, c = 2, A = 1 -> r = 0.75
    # x_t = (1, 2), x0 = (0, 1), vθ = (2, 2), v_old = (1, 3)
    #   v+ = 0.5·vθ + 0.5·v_old = (1.5, 2.5) -> x̂0+ = x_t − 0.5·v+ = (0.25, 0.75); err (0.25, −0.25)
    #     mean² = 0.0625, mean| | = 0.25 -> 0.25
    #   v- = 1.5·v_old − 0.5·vθ = (0.5, 3.5) -> x̂0- = (0.75, 0.25); err (0.75, −0.75) -> 0.5625 / 0.75 = 0.75
    #   row loss = c/β·(0.75·0.25 + 0.25·0.75) = 4·0.375 = 1.5
    # row 1: A = −4 clipped to −2 -> r = 0; x_t = (0, 0), x0 = (1, 1), vθ = (0, 0), v_old = (0, 0), t = 1
    #   x̂0- = (0, 0), err (−1, −1) -> 1 / 1 = 1 -> row loss 4·1 = 4
    cfg, own = LossConfig(), NftOptions(beta=0.5, adv_clip=2.0)
    v = torch.tensor([[2.0, 2.0], [0.0, 0.0]], requires_grad=True)
    inputs = _inputs([1.0, -4.0], v, torch.tensor([[1.0, 3.0], [0.0, 0.0]]), torch.tensor([[1.0, 2.0], [0.0, 0.0]]),
                     torch.tensor([[0.0, 1.0], [1.0, 1.0]]), [0.5, 1.0])  # fmt: skip
    out = compute_loss("nft", inputs, cfg, own)
    assert out.loss.item() == pytest.approx((1.5 + 4.0) / 2)
    assert out.metrics["nft/positive"] == pytest.approx((0.25 + 1.0) / 2)  # row 1: x̂0+ = x_t too
    # the weight carries no gradient: d/dvθ of row 1's 4·mean((x_t − t·(1.5·v_old − 0.5·vθ) − x0)²)/1 at vθ = 0 is
    # 4·(2·(−1)·0.5)/2 per element, averaged over the 2 rows: −1
    out.loss.backward()
    assert v.grad[1].tolist() == pytest.approx([-1.0, -1.0])


def test_weight_maps_clipped_advantages_to_unit_interval():
    r = nft_weight(torch.tensor([-9.0, -5.0, -2.5, 0.0, 2.5, 5.0, 9.0]), 5.0)
    assert r.tolist() == pytest.approx([0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0])


@pytest.mark.parametrize("adv, toward", [(5.0, True), (-5.0, False)])
def test_gradient_pulls_toward_the_sample_for_r1_and_away_for_r0(adv, toward):
    # at vθ = v_old, a gradient step on vθ moves the positive policy's x0-prediction toward x0 (r = 1) or the
    # implicit negative's toward x0, i.e. the policy's own prediction away from it (r = 0)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    t = torch.full((4,), 0.6)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * eps
    v_old = eps - x0 + 0.3 * torch.randn(4, 8, generator=g)  # an imperfect old policy
    v = v_old.clone().requires_grad_(True)
    loss = compute_loss("nft", _inputs([adv] * 4, v, v_old, x_t, x0, t.tolist()), LossConfig()).loss
    loss.backward()
    stepped = v.detach() - 1e-3 * v.grad
    before = ((x_t - t[:, None] * v.detach() - x0) ** 2).mean()
    after = ((x_t - t[:, None] * stepped - x0) ** 2).mean()
    assert (after < before) == toward


def test_velocity_penalty_is_nft_train_beta_term():
    v = torch.tensor([[1.0, 3.0]], requires_grad=True)
    base = _inputs([0.0], v, v.detach(), torch.zeros(1, 2), torch.zeros(1, 2), [0.5])
    base.v_ref = torch.tensor([[0.0, 1.0]])
    plain = compute_loss("nft", base, LossConfig()).loss.item()
    out = compute_loss("nft", base, LossConfig(velocity_kl_coef=0.1))
    assert out.loss.item() == pytest.approx(plain + 0.1 * (1 + 4) / 2)  # mean((vθ − v_ref)²) = 2.5


def test_decay_types_are_return_decay():
    assert [nft_decay(s, 0) for s in (0, 10, 1000)] == [0.0, 0.0, 0.0]
    assert [nft_decay(s, 1) for s in (0, 1, 100, 499, 500, 2000)] == pytest.approx([0, 0.001, 0.1, 0.499, 0.5, 0.5])
    assert [nft_decay(s, 2) for s in (0, 74, 75, 76, 100, 208, 1000)] == pytest.approx(
        [0, 0, 0, 0.0075, 0.1875, 0.9975, 0.999]
    )


def test_config_refusals():
    base = ["model.path=assets/toy-sd3", *NFT_ARGS]
    load_config(None, base)
    with pytest.raises(ConfigError, match="records no transitions"):
        load_config(None, ["model.path=assets/toy-sd3", "sampler.mode=ode"])
    with pytest.raises(ConfigError, match="cfg_scale=1"):
        load_config(None, [*base, "model.cfg_scale=4.5"])
    with pytest.raises(ConfigError, match=r"^loss\.nft\.decay_type: must be <= 2, got 3$"):
        load_config(None, [*base, "loss.nft.decay_type=3"])


def test_trainer_samples_with_the_old_policy_and_trails_it(tiny_model, tmp_path):
    from tiny_runs import tiny_config

    from flowrl.image.objectives import OBJECTIVES
    from flowrl.image.run import restore, save_checkpoint
    from flowrl.image.trainer import advantages, sample, setup, train_step
    from flowrl.samplers import index_cond

    run = setup(tiny_config(tiny_model, *NFT_ARGS, "loss.velocity_kl_coef=1e-4"))
    assert run.old is not None and all(torch.equal(o, p) for o, p in zip(run.old.shadow, run.params, strict=True))
    # rows: 8 samples x int(4 x 0.5) = 2 distinct levels each
    batch = sample(run, run.train_prompts[:2])
    assert len(batch.rollout.transitions) == 0 and batch.rollout.samples.shape[0] == 8
    train, _ = advantages(run, batch)
    assert train.advantages.shape == train.sigma.shape == (16,)
    assert all(train.sigma[2 * i] != train.sigma[2 * i + 1] for i in range(8))
    # the objective's loss rebuilt by hand for rows 3 (sample 1) and 10 (sample 5)
    rows = torch.tensor([3, 10])
    out = OBJECTIVES.get("samples")(run, batch, rows, train)
    x0 = batch.rollout.samples[rows // 2]
    sigma = train.sigma[rows].to(x0)
    eps = torch.stack([torch.randn(3, 32, 32, generator=torch.Generator().manual_seed(int(train.noise_seed[r])))
                       for r in rows]).to(x0)  # fmt: skip
    x_t = (1 - sigma.view(-1, 1, 1, 1)) * x0 + sigma.view(-1, 1, 1, 1) * eps
    with torch.no_grad():
        v = run.policy.velocity(x_t, sigma, index_cond(batch.cond, batch.rollout.cond_index[rows // 2]))
    # at the start the old policy is the policy and the reference (LoRA B = 0): vθ = v_old = v_ref, no penalty
    expected = compute_loss("nft", _inputs(train.advantages[rows].tolist(), v, v, x_t, x0, sigma.tolist()),
                            replace(run.cfg.loss, velocity_kl_coef=0.0)).loss  # fmt: skip
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)

    first = train_step(run)
    assert first["train/rows"] == 16 and math.isfinite(first["train/loss"])
    # decay type 1 after 1 optimizer step: d = 0.001, old = 0.001·θ0 + 0.999·θ1
    assert first["train/old_decay"] == pytest.approx(0.001)
    live = [p.detach().clone() for p in run.params]
    before = [s.clone() for s in run.old.shadow]
    second = train_step(run)
    assert second["train/old_decay"] == pytest.approx(0.002) and second["nft/old_deviation"] > 0
    assert any(not torch.equal(p, now.detach()) for p, now in zip(live, run.params, strict=True))
    for old, prev, now in zip(run.old.shadow, before, run.params, strict=True):
        torch.testing.assert_close(old, 0.002 * prev + 0.998 * now.detach())
    # the old policy rides in the checkpoint
    save_checkpoint(run, str(tmp_path / "ckpt"))
    again = setup(tiny_config(tiny_model, *NFT_ARGS, "loss.velocity_kl_coef=1e-4"))
    restore(again, str(tmp_path / "ckpt"))
    assert all(torch.equal(a, b) for a, b in zip(again.old.shadow, run.old.shadow, strict=True))


@pytest.mark.parametrize("copy", ["none", "fp32"])
def test_rollouts_come_from_the_old_weights(tiny_model, copy):
    from tiny_runs import tiny_config

    from flowrl.image.trainer import sample, setup

    run = setup(tiny_config(tiny_model, *NFT_ARGS, f"model.untrained_copy={copy}"))
    prompts = run.train_prompts[:1]
    with torch.no_grad():
        for p in run.params:
            p.add_(0.05 * torch.randn_like(p))  # move θ; the old policy stays at θ0
    from_old = sample(run, prompts).rollout.samples
    old, run.old = run.old, None
    from_live = sample(run, prompts).rollout.samples
    with torch.no_grad(), old.applied():
        run.iteration = 0
        from_theta0 = sample(run, prompts).rollout.samples
    assert torch.equal(from_old, from_theta0) and not torch.equal(from_old, from_live)


def test_lora_round_trip_through_diffusers(tiny_model, tmp_path):
    from diffusers import StableDiffusion3Pipeline
    from tiny_runs import tiny_config

    from flowrl.image.models import SD3Policy
    from flowrl.image.run import save_checkpoint
    from flowrl.image.trainer import setup, train_step

    run = setup(tiny_config(tiny_model, *NFT_ARGS))
    train_step(run)
    train_step(run)
    save_checkpoint(run, str(tmp_path / "ckpt"))
    fresh = SD3Policy(tiny_model)
    pipe = StableDiffusion3Pipeline(
        transformer=fresh.transformer, scheduler=fresh.scheduler, vae=None, text_encoder=fresh.encoders[0][0],
        tokenizer=fresh.encoders[0][1], text_encoder_2=None, tokenizer_2=None, text_encoder_3=None, tokenizer_3=None,
    )  # fmt: skip
    pipe.load_lora_weights(str(tmp_path / "ckpt" / "lora"))
    cond = fresh.encode(["two red circles"]).as_dict()
    x, sigma = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0.6])
    with torch.no_grad():
        v_loaded, v_trained = fresh.velocity(x, sigma, cond), velocity_on_cpu(run.policy, x, sigma, cond)
        v_base = SD3Policy(tiny_model).velocity(x, sigma, cond)
    torch.testing.assert_close(v_loaded, v_trained, atol=1e-5, rtol=1e-5)
    assert (v_loaded - v_base).abs().max() > 1e-4


def test_inner_epochs_draw_new_levels_and_noise_as_diffusionnft_does(tiny_model):
    """DiffusionNFT (scripts/train_nft_sd3.py) permutes each sample's timesteps and draws its noise inside the
    inner-epoch loop: with loss.nft.renoise_each_epoch (the default) epoch 1's rows are a new draw, the same on every
    process (by whole-batch position); with it off, epoch 0's rows come back."""
    from tiny_runs import tiny_config

    from flowrl.image.objectives import OBJECTIVES
    from flowrl.image.trainer import advantages, sample, setup, train_step

    run = setup(tiny_config(tiny_model, *NFT_ARGS, "train.inner_epochs=2"))
    batch = sample(run, run.train_prompts[:2])
    train, _ = advantages(run, batch)
    samples = OBJECTIVES.get("samples")
    assert samples.epoch_rows(run, train, 0) is train
    again = samples.epoch_rows(run, train, 1)
    assert (again.noise_seed != train.noise_seed).all() and not torch.equal(again.sigma, train.sigma)
    assert all(again.sigma[2 * i] != again.sigma[2 * i + 1] for i in range(8))  # still 2 distinct levels each
    assert set(again.sigma.tolist()) <= set(run.policy.sigmas(4, run.cfg.model.resolution).tolist())
    assert torch.equal(again.advantages, train.advantages) and torch.equal(again.position, train.position)
    # a process holding only samples 2 and 3 draws the same levels and seeds for them
    part = replace(train, position=train.position[4:8])
    sigma, seed = samples._draw(run, part, 1)
    assert torch.equal(sigma, again.sigma[4:8]) and torch.equal(seed, again.noise_seed[4:8])
    run.cfg.loss.options.renoise_each_epoch = False
    assert samples.epoch_rows(run, train, 1) is train
    run.cfg.loss.options.renoise_each_epoch = True
    out = train_step(run)
    assert out["train/rows"] == 16 and math.isfinite(out["train/loss"])


def test_a_ratio_clipping_sample_loss_refuses_new_noise_per_epoch():
    base = ["model.path=assets/toy-sd3", "loss.name=awm", "sampler.mode=ode", "loss.awm.ratio=true"]
    load_config(None, [*base, "train.inner_epochs=2"])  # AWM keeps its rows by default
    with pytest.raises(ConfigError, match="needs the same noise in every inner epoch"):
        load_config(None, [*base, "train.inner_epochs=2", "loss.awm.renoise_each_epoch=true"])
    load_config(None, [*base, "loss.awm.renoise_each_epoch=true"])  # one pass: nothing to keep


def test_a_run_stored_before_the_option_resumes_as_it_ran():
    """A config stored before renoise_each_epoch existed kept each row's noise for the iteration: read back, it says
    so, and a resume must say the same (or is refused naming the key)."""
    from flowrl.core.method_options import upgrade
    from flowrl.core.options import to_dict
    from flowrl.image.config import Config

    now = to_dict(load_config(None, ["model.path=assets/toy-sd3", *NFT_ARGS]))
    assert now["loss"]["nft"]["renoise_each_epoch"] is True
    stored = {**now, "loss": {**now["loss"], "nft": dict(now["loss"]["nft"])}}
    del stored["loss"]["nft"]["renoise_each_epoch"]
    assert upgrade(Config, stored)["loss"]["nft"]["renoise_each_epoch"] is False
    assert upgrade(Config, now) == now
