"""Offline Diffusion-DPO from a pair dataset (``data.pairs``, flowrl.image.pairs): the soft-label loss by hand, the
JSONL and ``datasets`` readers and their refusals, the image preparation by hand, the latent cache, and training on
the tiny SD3 (each pair's latents are its images' encodings, a soft label scales the first gradient, ties drop)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_runs import write_pairs

from flowrl.core.errors import ConfigError, DataError
from flowrl.core.losses import DpoOptions, LossConfig, LossInputs, compute_loss
from flowrl.image.pair_data import load_image, read_pairs
from flowrl.recipes import load_config

OFFLINE = ["loss.name=dpo", "sampler.mode=ode", "loss.dpo.renoise_count=2", "loss.dpo.beta=50"]


def test_soft_label_loss_by_hand():
    # one pair, one element, target 0: chosen error 1 − 4 = −3 against the reference, rejected 4 − 1 = 3; β 2
    v, v_ref = torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0], [1.0]])
    inputs = LossInputs(v_pred=v, v_old=v_ref, v_target=torch.zeros(2, 1), pair_labels=torch.tensor([0.75]))
    out = compute_loss("dpo", inputs, LossConfig(), DpoOptions(beta=2.0))
    z = 6.0  # −½·2·(−3 − 3)
    expected = -(0.75 * math.log(1 / (1 + math.exp(-z))) + 0.25 * math.log(1 / (1 + math.exp(z))))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # a label of 1 is the hard loss
    hard = compute_loss("dpo", LossInputs(v_pred=v, v_old=v_ref, v_target=torch.zeros(2, 1)), LossConfig(),
                        DpoOptions(beta=2.0))  # fmt: skip
    inputs.pair_labels = torch.ones(1)
    assert compute_loss("dpo", inputs, LossConfig(), DpoOptions(beta=2.0)).loss.item() == pytest.approx(
        hard.loss.item(), rel=1e-6
    )


def test_jsonl_records_and_refusals(tmp_path):
    path = write_pairs(tmp_path, [None, 0.75])
    records = read_pairs(path)
    assert [r.label for r in records] == [1.0, 0.75]
    assert records[1].prompt == "a photo of 1 dogs" and records[1].chosen == str(tmp_path / "img" / "chosen1.png")
    bad = {
        '{"prompt": "p", "chosen": "img/chosen0.png", "rejected": "img/rejected0.png", "label": 0.3}': "swap",
        '{"prompt": "p", "chosen": "img/chosen0.png", "rejected": "img/nope.png"}': "nope.png",
        '{"prompt": "p", "chosen": "img/chosen0.png"}': "missing rejected",
        '{"prompt": "p", "chosen": "img/chosen0.png", "rejected": "img/rejected0.png", "label": true}': "label",
        "[1, 2]": "expected an object",
        "{prompt": "not JSON",
    }
    for line, match in bad.items():
        (tmp_path / "bad.jsonl").write_text(line + "\n")
        with pytest.raises(DataError, match=rf"line 1.*{match}"):
            read_pairs(str(tmp_path / "bad.jsonl"))
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match="no pairs"):
        read_pairs(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="neither"):
        read_pairs(str(tmp_path / "absent.jsonl"))


def test_datasets_folder_reads_as_the_jsonl(tmp_path):
    from datasets import Dataset
    from datasets import Image as ImageFeature

    path = write_pairs(tmp_path, [None, 0.9])
    rows = [json.loads(line) for line in open(path)]
    data = Dataset.from_dict({
        "prompt": [r["prompt"] for r in rows],
        "chosen": [str(tmp_path / r["chosen"]) for r in rows],
        "rejected": [str(tmp_path / r["rejected"]) for r in rows],
        "label": [r.get("label") for r in rows],
    }).cast_column("chosen", ImageFeature()).cast_column("rejected", ImageFeature())  # fmt: skip
    data.save_to_disk(str(tmp_path / "ds"))
    records = read_pairs(str(tmp_path / "ds"))
    assert [(r.prompt, r.label) for r in records] == [(r.prompt, r.label) for r in read_pairs(path)]
    # stored undecoded; prepared to the same pixels as the file
    assert torch.equal(load_image(records[1].rejected, (16, 16)), load_image(str(tmp_path / rows[1]["rejected"]),
                                                                            (16, 16)))  # fmt: skip
    Dataset.from_dict({"prompt": ["p"], "chosen": ["x"]}).save_to_disk(str(tmp_path / "short"))
    with pytest.raises(DataError, match=r"lacks the column.*rejected"):
        read_pairs(str(tmp_path / "short"))


def test_image_resized_to_cover_and_centre_cropped():
    # 8 wide x 4 high: left quarter red, middle half green, right quarter blue; to 2 x 2 it is scaled by 1/2 (4 x 2),
    # then the middle 2 columns are kept: green
    image = Image.new("RGB", (8, 4), (0, 255, 0))
    for x in range(8):
        for y in range(4):
            if x < 2:
                image.putpixel((x, y), (255, 0, 0))
            elif x >= 6:
                image.putpixel((x, y), (0, 0, 255))
    out = load_image(image, (2, 2))
    assert out.shape == (3, 2, 2) and out.dtype == torch.float32
    # (bicubic filtering lets a little of the neighbouring red and blue in at the crop's edges)
    assert float(out[1].min()) > 0.9 and float(out[0].max()) < 0.1 and float(out[2].max()) < 0.1
    pixels = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float()  # [3, 4, 8]: the same size is unchanged
    assert load_image(image, (4, 8)).mul(255).round().equal(pixels)


def test_config_refusals(tmp_path):
    path = write_pairs(tmp_path, [None])
    base = ["model.path=assets/toy-sd3", *OFFLINE, f"data.pairs={path}"]
    assert load_config(None, base).data.pairs == path
    with pytest.raises(ConfigError, match=r"needs rollouts.*dpo"):
        load_config(None, ["model.path=assets/toy-sd3", "loss.name=smpo", "sampler.mode=ode", f"data.pairs={path}"])
    with pytest.raises(ConfigError, match="needs rollouts"):
        load_config(None, ["model.path=assets/toy-sd3", f"data.pairs={path}"])
    with pytest.raises(ConfigError, match=r"rollout.filter"):
        load_config(None, [*base, "rollout.filter=[{name: zero-variance}]"])
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p"}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl line 1: missing chosen, rejected"):
        load_config(None, [*base, f"data.pairs={tmp_path / 'bad.jsonl'}"])


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_offline_training_on_the_tiny_model(tiny_model, tmp_path, monkeypatch):
    from tiny_runs import tiny_config

    from flowrl.image import pairs as pair_module
    from flowrl.image.objectives import OBJECTIVES
    from flowrl.image.trainer import objective, pair_batch, setup, train_step

    path = write_pairs(tmp_path, [None, 0.75, 0.5])
    args = [*OFFLINE, f"data.pairs={path}", f"data.pairs_cache={tmp_path / 'cache'}", "train.prompts_per_step=3"]
    run = setup(tiny_config(tiny_model, *args))
    (cached,) = os.listdir(tmp_path / "cache")
    # every pair's latents are its two images' encodings; the labels and prompts are the file's
    records = read_pairs(path)
    size = (run.cfg.model.resolution,) * 2
    with torch.no_grad():
        chosen = run.policy.encode_images(torch.stack([load_image(r.chosen, size) for r in records]))
    assert torch.allclose(run.pairs.latents("chosen", [0, 1, 2]), chosen.cpu(), atol=1e-6)
    assert run.pairs.labels.tolist() == [1.0, 0.75, 0.5] and run.pairs.prompts == [r.prompt for r in records]

    # a second run reads the cache: no image is encoded again
    def no_encoding(*_):
        raise AssertionError("encoded again")

    monkeypatch.setattr(pair_module, "encode_pairs", no_encoding)
    run = setup(tiny_config(tiny_model, *args))
    assert os.listdir(tmp_path / "cache") == [cached]

    # the iteration's batch: chosen, rejected per pair; the tie (label 0.5) makes no pair
    batch = pair_batch(run)
    order = [run.pairs.prompts.index(p) for p in batch.prompts[::2]]
    assert torch.equal(batch.rollout.samples[0::2].cpu(), run.pairs.latents("chosen", order))
    assert torch.equal(batch.rollout.samples[1::2].cpu(), run.pairs.latents("rejected", order))
    from flowrl.core.advantages import AdvantageBatch
    from flowrl.core.share import gather_batch

    whole = gather_batch(run.accelerator, AdvantageBatch(batch.rewards, batch.rollout.group_id, torch.ones(1)))
    pref = whole.batch.rewards[:, 0]
    train = objective(run).rows(run, batch, whole, pref, torch.ones_like(pref, dtype=torch.bool))
    kept = [i for i, k in enumerate(order) if k != 2]
    assert train.pair.tolist() == [[2 * i, 2 * i + 1] for i in kept for _ in range(2)]
    assert train.pair_label.tolist() == [float(run.pairs.labels[order[i]]) for i in kept for _ in range(2)]

    # at the start (policy = reference, z = 0) a label p scales a row's gradient by (p − ½)/(1 − ½)
    def grads(labels: torch.Tensor) -> torch.Tensor:
        train.pair_label = labels
        run.optimizer.zero_grad()
        OBJECTIVES.get("pairs")(run, batch, torch.tensor([0]), train).loss.backward()
        return torch.cat([p.grad.flatten() for p in run.params])

    full, soft = grads(torch.ones(train.pair.shape[0])), grads(torch.full((train.pair.shape[0],), 0.75))
    assert float(full.norm()) > 0 and torch.allclose(soft, 0.5 * full, atol=1e-7, rtol=1e-4)
    run.optimizer.zero_grad()

    base = [p.detach().clone() for p in run.params]
    metrics = [train_step(run) for _ in range(2)]
    assert all(m["train/rows"] > 0 and math.isfinite(m["train/loss"]) and m["train/skipped"] == 0 for m in metrics)
    assert any(not torch.equal(p.detach(), b) for p, b in zip(run.params, base, strict=True))
    assert metrics[0]["pairs/ties"] == 1 and metrics[0]["pairs/label_mean"] == pytest.approx(0.75)


def test_toy_pair_script_writes_a_dataset_the_trainer_reads(tmp_path):
    """scripts/make_toy_pairs.py: each prompt's best and worst base sample by the evaluator, readable as data.pairs;
    the chosen image scores at least as high as the rejected one (after the PNG round trip) and soft labels are
    σ(Δr/τ) > ½."""
    import runpy

    from flowrl.image.data import load_prompts
    from flowrl.rewards import make_reward

    (tmp_path / "prompts.txt").write_text("".join(p + "\n" for p in load_prompts("toy:train-no-val")[:3]))
    script = runpy.run_path(os.path.join(os.path.dirname(__file__), "..", "scripts", "make_toy_pairs.py"))
    out = tmp_path / "pairs"
    assert script["main"](["--out", str(out), "--prompts", str(tmp_path / "prompts.txt"), "--samples", "4",
                           "--soft", "0.1"]) == 0  # fmt: skip
    records = read_pairs(str(out / "pairs.jsonl"))
    assert 1 <= len(records) <= 3 and all(0.5 < r.label <= 1 for r in records)
    evaluator = make_reward("toy-geneval")
    for r in records:
        chosen, rejected = (load_image(p, (32, 32))[None] for p in (r.chosen, r.rejected))
        scores = [float(evaluator(x, [r.prompt])["score"][0]) for x in (chosen, rejected)]
        assert scores[0] >= scores[1]
        assert r.label == pytest.approx(1 / (1 + math.exp(-(scores[0] - scores[1]) / 0.1)), abs=0.05)
    assert script["main"](["--out", str(out), "--samples", "1"]) == 2
