"""Every method the registries offer either runs or is refused at config time, before any model loads.

For each trainer, every (estimator, loss, sampler mode) combination is validated; each accepted one trains one tiny
iteration with a finite loss, and each refused one is a ``ConfigError`` whose message names the key at fault.
"""

from __future__ import annotations

import math

import pytest
from tiny_runs import MODE_OPTIONS, text_config

from flowrl.core.advantages import ADVANTAGES
from flowrl.core.errors import ConfigError
from flowrl.core.losses import LOSSES, TrainsOn
from flowrl.core.method_options import Backend
from flowrl.recipes import load_config
from flowrl.samplers.modes import ROLLOUT_MODES, Branching

TINY = [
    "model.lora_rank=2", "model.lora_alpha=2", "sampler.num_steps=4", "train.iterations=1",
    "train.prompts_per_step=2", "train.micro_batch=64", "eval.enabled=false", "output.progress=false",
    "rewards=[{name: toy-geneval}, {name: jpeg-compressibility, weight: 0.1}]",
]  # fmt: skip


def strata(estimator: str, source: str) -> list[str]:
    """``advantage.strata`` for an estimator that needs strata (stratified); any other refuses it."""
    return [f"advantage.strata={source}"] if "strata" in ADVANTAGES.facts(estimator).needs else []


def test_every_mode_is_covered():
    assert sorted(MODE_OPTIONS) == ROLLOUT_MODES.names()


@pytest.mark.parametrize("mode", sorted(MODE_OPTIONS))
def test_flow_combinations_run_or_are_refused_at_config_time(tiny_model, mode):
    from flowrl.image.trainer import setup, train_step

    ran, refused, run, run_loss = [], [], None, None
    for loss in LOSSES.names():
        for estimator in ADVANTAGES.names():
            args = [f"model.path={tiny_model}", *TINY, f"sampler.mode={mode}", *MODE_OPTIONS[mode]]
            args += [f"advantage.name={estimator}", f"loss.name={loss}"]
            args += strata(estimator, "toy-geneval/objects")  # stratified: the number of objects in each image
            try:
                cfg = load_config(None, args)
            except ConfigError as e:
                assert any(k in str(e) for k in ("advantage.name", "loss.name")), str(e)
                refused.append((estimator, loss))
                continue
            # setup reads no estimator, and of the loss only the trailing copy it may keep (DiffusionNFT's old policy,
            # AWM's EMA): one run serves every loss without one, and a loss with one gets a run of its own
            keeps_old = LOSSES.facts(loss).old_policy(cfg.loss.options) is not None
            if run is None or (loss != run_loss and (keeps_old or run.old is not None)):
                run, run_loss = setup(cfg), loss
            run.cfg, run.adv_state = cfg, {}
            metrics = train_step(run)
            assert math.isfinite(metrics["train/loss"]) and not metrics["train/skipped"], (estimator, loss, metrics)
            ran.append((estimator, loss))
    # the paper methods of each mode are among those that run; a mode without transitions trains sample losses only
    assert ("grpo", "awm") in ran and ("grpo", "nft") in ran
    if not ROLLOUT_MODES.facts(mode).stochastic:
        assert {loss for _, loss in ran} == {
            n for n in LOSSES.names() if LOSSES.facts(n).trains_on in (TrainsOn.SAMPLES, TrainsOn.PAIRS)
        }
        return
    assert ("grpo", "ppo-clip") in ran
    assert (("tree", "ppo-clip") in ran) == (ROLLOUT_MODES.facts(mode).branching is not Branching.NONE)
    assert ("multi-granularity", "ppo-clip") in ran or "extra_tail_steps" not in str(MODE_OPTIONS[mode])
    odd = "train.group_size=5" in MODE_OPTIONS[mode]
    assert (("median", "ppo-clip") in ran) == odd and ("rloo", "ppo-clip") in ran
    assert ("stratified", "ppo-clip") in ran
    assert "pairwise" in {e for e, _ in refused}  # no reward here compares images in pairs: see the test below


@pytest.fixture(scope="module")
def kontext_rows(tmp_path_factory) -> list[str]:
    """Overrides training a tiny FLUX.1-Kontext on prompt rows with a 32×32 reference image each."""
    from tiny_models import save_tiny_flux_kontext
    from tiny_runs import write_edit_rows

    root = tmp_path_factory.mktemp("kontext")
    path = save_tiny_flux_kontext(str(root / "model"))
    train, test = write_edit_rows(root, "train", 0, 2), write_edit_rows(root, "test", 2, 1)
    return [f"model.path={path}", "model.resolution=32", "model.max_sequence_length=16",
            f"data.train_prompts={train}", f"data.eval_prompts={test}"]  # fmt: skip


@pytest.mark.parametrize("mode", sorted(MODE_OPTIONS))
def test_every_loss_trains_an_editing_family(tiny_model, kontext_rows, mode):
    """Editing goes through the family interface: on FLUX.1-Kontext (reference tokens beside the target's) with an
    edit reward reading the rows' source images, every loss a mode accepts with the GRPO estimator (the same ones
    as on the text-to-image toy) trains one iteration with a finite loss."""
    from flowrl.image.trainer import setup, train_step

    reads_rows = "rewards=[{name: toy-geneval}, {name: pixel-similarity, weight: 0.5}]"
    runs = {"edit": [*kontext_rows, *TINY, reads_rows], "t2i": [f"model.path={tiny_model}", *TINY]}
    accepted: dict[str, list[str]] = {"edit": [], "t2i": []}
    run = None
    for loss in LOSSES.names():
        for kind, args in runs.items():
            try:
                cfg = load_config(None, [*args, f"sampler.mode={mode}", *MODE_OPTIONS[mode], f"loss.name={loss}"])
            except ConfigError:
                continue
            accepted[kind].append(loss)
            if kind == "edit":  # one run serves the losses that keep no trailing copy (as the test above)
                if run is None or LOSSES.facts(loss).old_policy(cfg.loss.options) is not None or run.old is not None:
                    run = setup(cfg)
                run.cfg, run.adv_state = cfg, {}
                metrics = train_step(run)
                assert math.isfinite(metrics["train/loss"]) and not metrics["train/skipped"], (loss, metrics)
    assert accepted["edit"] == accepted["t2i"] and "nft" in accepted["edit"]


def test_text_combinations_run_or_are_refused_at_config_time(lm_dir):
    from flowrl.text.trainer import setup, train_step

    ran, refused, run = [], [], None
    for estimator in ADVANTAGES.names():
        for loss in LOSSES.names():
            group = "train.group_size=5" if ADVANTAGES.facts(estimator).odd_groups else "train.group_size=4"
            try:
                answer = strata(estimator, "toy-text:answer-digits")  # stratified: the answer's length
                cfg = text_config(lm_dir, f"advantage.name={estimator}", f"loss.name={loss}", group, *answer)
            except ConfigError as e:
                assert any(k in str(e) for k in ("advantage.name", "loss.name")), str(e)
                refused.append((estimator, loss))
                continue
            if run is None or cfg.train.group_size != run.cfg.train.group_size:
                run = setup(cfg)  # setup reads the group size, but neither the estimator nor the loss
            run.cfg, run.adv_state = cfg, {}
            metrics = train_step(run)
            assert math.isfinite(metrics["train/loss"]) and not metrics["train/skipped_steps"], (
                estimator,
                loss,
                metrics,
            )
            ran.append((estimator, loss))
    text_losses = {"grpo", "bnpo", "dr-grpo", "dapo", "gspo", "cispo", "sapo"}
    assert {loss for _, loss in ran} == text_losses  # the flow losses are refused
    assert {e for e, _ in ran} == set(ADVANTAGES.names()) - {"pairwise", "multi-granularity", "tree"}
    assert len(ran) + len(refused) == len(ADVANTAGES.names()) * len(LOSSES.names())


def test_every_loss_names_a_registered_objective_of_its_trainers():
    from flowrl.image.objectives import OBJECTIVES

    for loss in LOSSES.names():
        facts = LOSSES.facts(loss)
        assert facts.trains_on in OBJECTIVES, loss
        assert set(facts.trainers) <= set(Backend) and facts.trainers, loss
        if facts.trains_on is not TrainsOn.TRANSITIONS:  # the text trainer's rows are tokens: transitions only
            assert facts.trainers == (Backend.FLOW,), loss


def test_pairwise_trains_on_the_judges_preferences(tiny_model):
    """Pref-GRPO end to end: the VLM judge (a scripted server preferring the brighter image) gives a preference
    matrix, the pairwise estimator's advantages are the group z-scores of each image's win rate, and the update
    trains. Without a judge, or with the judge in pointwise mode, pairwise is refused naming the fix."""
    import torch
    from fake_judge import FakeJudge

    from flowrl.core.advantages import compute_advantages
    from flowrl.core.share import gather_batch
    from flowrl.image.trainer import advantage_batch, sample, setup, train_step

    common = [f"model.path={tiny_model}", *TINY[:-2], "train.group_size=4", "advantage.name=pairwise"]
    judge = FakeJudge()
    try:
        reward = f"rewards=[{{name: vlm-judge, options: {{base_url: '{judge.base_url}', model: fake}}}}]"
        cfg = load_config(None, [*common, reward])
        run = setup(cfg)
        batch = sample(run, run.train_prompts[:2])
        whole = gather_batch(run.accelerator, advantage_batch(run, batch)).batch
        p = whole.pairwise
        assert whole.group_id.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
        assert p.shape == (8, 8) and torch.equal(p[:4, 4:], torch.zeros(4, 4))  # no verdicts across groups
        rate = (p.sum(1) / 3).view(2, 4)  # wins (ties ½) over the G − 1 = 3 comparisons of each image
        torch.testing.assert_close(rate.flatten(), batch.components["vlm-judge"])  # the judge's own win rates
        adv = compute_advantages("pairwise", whole, cfg.advantage, {}).advantages.view(2, 4)
        std = rate.std(1, unbiased=False, keepdim=True)
        expected = torch.where(std > 0, (rate - rate.mean(1, keepdim=True)) / (std + cfg.advantage.eps), 0.0)
        torch.testing.assert_close(adv.float(), expected, atol=1e-5, rtol=0)
        metrics = train_step(run)
        assert math.isfinite(metrics["train/loss"]) and not metrics["train/skipped"]
    finally:
        judge.close()
    pointwise = "rewards=[{name: vlm-judge, options: {base_url: 'http://127.0.0.1:1/v1', mode: pointwise}}]"
    for rewards in ("rewards=[{name: toy-geneval}]", pointwise):
        with pytest.raises(ConfigError, match=r"advantage.name=pairwise .*vlm-judge, vlm-video-judge in its pairwise"):
            load_config(None, [*common, rewards])


def test_strata_come_from_a_scored_component_or_a_text_function(tiny_model, lm_dir):
    """Stratified GRPO's strata: the number of objects found in each image (flows) or the answer's length (text),
    fed per sample; a source that names no reward, or a text source that is not a function, is refused at config
    time."""
    import torch

    from flowrl.core.advantages import compute_advantages
    from flowrl.image.trainer import advantage_batch, sample, setup
    from flowrl.text.trainer import generate
    from flowrl.text.trainer import strata as text_strata

    common = [f"model.path={tiny_model}", *TINY, "train.group_size=4", "advantage.name=stratified",
              "advantage.strata=toy-geneval/objects"]  # fmt: skip
    run = setup(load_config(None, common))
    batch = sample(run, run.train_prompts[:2])
    found = advantage_batch(run, batch).strata
    assert torch.equal(found, batch.components["toy-geneval/objects"].long()) and found.min() >= 0
    whole = advantage_batch(run, batch)
    cfg = run.cfg.advantage
    one = compute_advantages("stratified", whole, cfg, {}).advantages
    same = compute_advantages("stratified", replace_strata(whole, torch.zeros_like(found)), cfg, {}).advantages
    grpo = compute_advantages("grpo", whole, cfg, {}).advantages
    torch.testing.assert_close(same, grpo)  # one stratum per group: the group z-score
    varies = any(len(set(found[k * 4 : (k + 1) * 4].tolist())) > 1 for k in range(2))  # within a group
    assert varies != torch.allclose(one, grpo)
    with pytest.raises(ConfigError, match=r"advantage.strata='clip/objects' names no configured reward"):
        load_config(None, [*common[:-1], "advantage.strata=clip/objects"])
    with pytest.raises(ConfigError, match=r"advantage.name=stratified needs strata .*set advantage.strata"):
        load_config(None, [f"model.path={tiny_model}", *TINY, "advantage.name=stratified"])

    text = text_config(lm_dir, "advantage.name=stratified", "advantage.strata=toy-text:answer-digits")
    from flowrl.text.trainer import setup as text_setup

    trun = text_setup(text)
    tbatch = generate(trun, trun.train_rows[:2])
    from flowrl.text.world import parse_answer

    assert text_strata(trun, tbatch).tolist() == [len(parse_answer(t)) for t in tbatch.completions.texts]
    with pytest.raises(ConfigError, match=r"advantage.strata='digits': give a function"):
        text_config(lm_dir, "advantage.name=stratified", "advantage.strata=digits")


def replace_strata(batch, strata):
    from dataclasses import replace

    return replace(batch, strata=strata)
