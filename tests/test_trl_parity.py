"""Parity with TRL's GRPOTrainer: for the same tiny model, prompts, completions, old and reference log-probs and
advantages, flowrl's loss (shared registry + shared-prefix log-probs) and its gradients equal TRL's.

TRL is a dev dependency (``trl`` in the ``dev`` extra). Its trainer is built offline on a model folder saved
here; its ``_compute_loss`` is called directly with one batch (no gradient accumulation), in float32 (TRL's
GRPOConfig defaults to bf16 autocast, which would round the log-probs by ~1e-3)."""

from __future__ import annotations

import pytest
import torch

from flowrl.core.losses import LossConfig, LossInputs, compute_loss
from flowrl.text.model import completion_mask, token_log_probs

trl = pytest.importorskip("trl")

LOSS_TYPES = {"grpo": "grpo", "bnpo": "bnpo", "dr_grpo": "dr-grpo", "dapo": "dapo", "cispo": "cispo", "sapo": "sapo"}
P, G, LP, LC, TEMPERATURE = 2, 3, 5, 4, 0.9


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    from flowrl.text.world import build_model, build_tokenizer

    path = str(tmp_path_factory.mktemp("lm"))
    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden=32, layers=2, heads=2, intermediate=64, seed=3).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _batch() -> dict[str, torch.Tensor]:
    """Left-padded prompts, completions with early EOS (id 2) and padding, off-policy old and reference log-probs."""
    g = torch.Generator().manual_seed(1)
    prompt_ids = torch.randint(4, 16, (P, LP), generator=g)
    prompt_mask = torch.ones(P, LP, dtype=torch.long)
    prompt_mask[1, :2] = 0
    prompt_ids[prompt_mask == 0] = 0
    ids = torch.randint(4, 16, (P * G, LC), generator=g)
    ids[1, 1] = ids[4, 2] = 2
    mask, _ = completion_mask(ids, 2)
    return {
        "prompt_ids": prompt_ids,
        "prompt_mask": prompt_mask,
        "completion_ids": ids.masked_fill(mask == 0, 0),
        "completion_mask": mask,
        "index": torch.arange(P).repeat_interleave(G),
        "advantages": torch.randn(P * G, generator=g),
        "noise_old": 0.3 * torch.randn(P * G, LC, generator=g),
        "noise_ref": 0.2 * torch.randn(P * G, LC, generator=g),
    }


#: (TRL loss_type, importance_sampling_level, use_bias_correction_kl, delta, top_entropy_quantile)
CASES = (
    [(t, "token", kl, None, 1.0) for t in LOSS_TYPES for kl in (True, False)]
    + [(t, "sequence", True, None, 1.0) for t in ("grpo", "dapo", "cispo", "sapo")]
    + [("dapo", "token", True, 1.3, 1.0), ("grpo", "token", True, None, 0.5), ("dapo", "sequence", True, None, 0.3)]
)


@pytest.fixture(scope="module")
def trl_trainer(model_dir, tmp_path_factory):
    """One TRL trainer; each case sets the attributes its ``_compute_loss`` reads."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    args = trl.GRPOConfig(
        output_dir=str(tmp_path_factory.mktemp("trl")), per_device_train_batch_size=P * G, num_generations=G,
        max_completion_length=LC, beta=0.04, temperature=TEMPERATURE, bf16=False, use_cpu=True, report_to=[],
    )  # fmt: skip
    trainer = trl.GRPOTrainer(
        model=model_dir,
        reward_funcs=[lambda prompts, completions, **_: [0.0] * len(prompts)],
        args=args,
        train_dataset=Dataset.from_list([{"prompt": "1+2="}] * 8),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.current_gradient_accumulation_steps = 1
    return trainer


def _configure(trainer, loss_type: str, level: str, kl_importance: bool, delta, quantile: float) -> float:
    """Set TRL's trainer up for one case; the ε_high it uses (CISPO's cap is the ratio's, 1.2, so that it binds)."""
    from accelerate import Accelerator

    high = 1.2 if loss_type == "cispo" else 0.28
    trainer.accelerator = Accelerator(cpu=True)  # accelerate's process state is reset after every test (conftest)
    trainer.loss_type, trainer.importance_sampling_level, trainer.top_entropy_quantile = loss_type, level, quantile
    trainer.epsilon_low, trainer.epsilon_high = 0.2, high
    trainer.args.use_bias_correction_kl, trainer.args.delta = kl_importance, delta
    return high


@pytest.mark.parametrize(("loss_type", "level", "kl_importance", "delta", "quantile"), CASES)
def test_loss_and_gradients_equal_trl(model_dir, trl_trainer, loss_type, level, kl_importance, delta, quantile):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    from flowrl.text.trainer import high_entropy_mask

    b = _batch()
    ours = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        base, _ = token_log_probs(
            ours, b["prompt_ids"], b["prompt_mask"], b["completion_ids"], b["completion_mask"], b["index"],
            temperature=TEMPERATURE, shared_prefix=False,
        )  # fmt: skip
    old, ref = base + b["noise_old"], base + b["noise_ref"]  # ratios away from 1: the clip matters

    high = _configure(trl_trainer, loss_type, level, kl_importance, delta, quantile)
    theirs = trl_trainer.model.train()
    theirs.zero_grad()
    inputs = {
        "prompt_ids": b["prompt_ids"][b["index"]],
        "prompt_mask": b["prompt_mask"][b["index"]],
        "completion_ids": b["completion_ids"],
        "completion_mask": b["completion_mask"],
        "advantages": b["advantages"],
        "old_per_token_logps": old,
        "ref_per_token_logps": ref,
        "num_items_in_batch": b["completion_mask"].sum().float(),
    }
    trl_loss = trl_trainer._compute_loss(theirs, inputs)
    trl_loss.backward()

    log_prob, entropy = token_log_probs(
        ours, b["prompt_ids"], b["prompt_mask"], b["completion_ids"], b["completion_mask"], b["index"],
        temperature=TEMPERATURE, shared_prefix=True,
    )  # fmt: skip
    cfg = LossConfig(clip_low=0.2, clip_high=high, kl_coef=0.04, max_length=LC, kl_importance=kl_importance,
                     importance_sampling_level=level, delta=delta, top_entropy_quantile=quantile)  # fmt: skip
    mask = b["completion_mask"]
    inputs = LossInputs(
        log_prob=log_prob, old_log_prob=old, advantages=b["advantages"], mask=mask.bool(), ref_log_prob=ref,
        token_count=float(mask.sum()),
        policy_weights=high_entropy_mask(entropy, mask, quantile, SimpleNamespace(num_processes=1)),
    )  # fmt: skip
    loss = compute_loss(LOSS_TYPES[loss_type], inputs, cfg).loss
    loss.backward()

    assert abs(loss.item() - trl_loss.item()) <= 1e-5, (loss.item(), trl_loss.item())
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        q = theirs_grads[name].grad
        assert p.grad is not None and q is not None, name
        rel = ((p.grad - q).norm() / q.norm()).item()
        assert rel <= 1e-4, (name, rel)
    assert max(p.grad.abs().max().item() for p in ours.parameters()) > 1e-4  # gradients that mean something


def test_entropy_mask_keeps_the_top_share_of_valid_tokens():
    from types import SimpleNamespace

    from flowrl.text.trainer import high_entropy_mask

    entropy = torch.tensor([[0.1, 0.9, 0.5, 7.0], [0.3, 0.7, 0.2, 0.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])  # the 7.0 is padding: not a candidate, never kept
    one = SimpleNamespace(num_processes=1)
    # valid entropies 0.1 0.9 0.5 0.3 0.7 0.2 0.0: the 0.5 quantile (linear interpolation) is 0.3
    kept = high_entropy_mask(entropy, mask, 0.5, one)
    assert kept.tolist() == [[False, True, True, False], [True, True, False, False]]
    assert high_entropy_mask(entropy, mask, 1.0, one) is None
