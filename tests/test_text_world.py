import importlib.util
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from flowrl.text.world import (
    EOS_TOKEN,
    MAX_NEW_TOKENS,
    PAD_TOKEN,
    build_model,
    build_tokenizer,
    correct,
    evaluate_accuracy,
    has_carry,
    mislabel,
    parse_prompt,
    problems,
    split_pairs,
    well_formed,
)

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "pretrain_text_toy.py"


def _script():
    spec = importlib.util.spec_from_file_location("pretrain_text_toy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_is_fixed_disjoint_and_complete():
    train, held_out = split_pairs()
    assert len(train) == 9000 and len(held_out) == 1000
    assert not set(train) & set(held_out)
    assert set(train) | set(held_out) == {(a, b) for a in range(100) for b in range(100)}
    assert split_pairs() == (train, held_out) and split_pairs(seed=1) != (train, held_out)
    # pinned: the shipped toy LM was pretrained on exactly this train split (its pretrain_report.json says so too)
    assert held_out[:4] == [(0, 13), (0, 22), (0, 25), (0, 32)] and sum(has_carry(a, b) for a, b in held_out) == 443
    rows = problems("held-out")
    assert rows == problems("held-out") and len(rows) == 1000
    assert all(r["answer"] == str(sum(parse_prompt(r["prompt"]))) for r in rows + problems("train"))
    with pytest.raises(ValueError, match="unknown toy-text split 'test'"):
        problems("test")


@pytest.mark.parametrize("seed", [0, 1, 2, 7])
def test_split_keeps_both_orders_of_a_pair_on_one_side(seed):
    train, held_out = split_pairs(seed=seed)
    train_set, held_set = set(train), set(held_out)
    assert all((b, a) in held_set for a, b in held_out)  # no a+b held out while b+a is trained on
    assert all((b, a) in train_set for a, b in train)
    assert len(held_out) == 1000 and len(train) == 9000
    unordered = {frozenset(p) for p in held_out}
    assert len(unordered) == sum(1 if a == b else 0.5 for a, b in held_out)  # each pair whole: 2 orders, or a = b
    assert split_pairs(seed=seed) == (train, held_out)


def test_split_on_small_cases_by_hand():
    # numbers 0..1: the problems 0+0, 0+1, 1+0, 1+1; half held out is either both orders of {0, 1} or both doubles
    seen = set()
    for seed in range(20):
        train, held_out = split_pairs(0.5, seed, numbers=2)
        assert held_out in ([(0, 1), (1, 0)], [(0, 0), (1, 1)]) and len(train) == 2
        seen.add(tuple(held_out))
    assert len(seen) == 2  # the seed picks between them
    # numbers 0..2, a third held out (3 of 9 problems): a pair in both orders and a double, or three doubles (a
    # pair that would make 4 is passed over); never a lone order
    for seed in range(20):
        train, held_out = split_pairs(1 / 3, seed, numbers=3)
        doubles = [p for p in held_out if p[0] == p[1]]
        assert len(held_out) == 3 and len(train) == 6
        assert len(doubles) == 1 or len(doubles) == 3
        assert all((b, a) in held_out for a, b in held_out)
    train, held_out = split_pairs(1 / 3, 0, numbers=3)
    assert held_out == [(0, 0), (1, 2), (2, 1)] and train == [(0, 1), (0, 2), (1, 0), (1, 1), (2, 0), (2, 2)]
    assert split_pairs(0.0, 0, numbers=3)[1] == [] and split_pairs(1.0, 0, numbers=3)[0] == []
    # one problem held out of 4: only a double fits, so the walk passes over {0, 1}
    assert [a == b for a, b in split_pairs(0.25, 0, numbers=2)[1]] == [True]


def test_the_shipped_toy_lm_was_pretrained_on_this_split():
    import hashlib

    report = json.loads((SCRIPT.parents[1] / "assets" / "toy-lm" / "pretrain_report.json").read_text())
    digest = hashlib.sha256("\n".join(r["prompt"] for r in problems("held-out")).encode()).hexdigest()
    # a change of the split must come with a base pretrained again (on the new train split only)
    assert report["split"] == {"unit": "unordered pair", "train": 9000, "held_out": 1000, "held_out_sha256": digest}
    assert _script().split_record(problems("train"), problems("held-out")) == report["split"]


def test_prompt_format_and_carry():
    assert parse_prompt("37+48=") == (37, 48) and parse_prompt("0+5=") == (0, 5)
    assert has_carry(37, 48) and has_carry(5, 5) and not has_carry(37, 42) and not has_carry(90, 90)
    for bad in ("37+48", "137+4=", "3 7+48=", "a+b="):
        with pytest.raises(ValueError, match="not a toy-text prompt"):
            parse_prompt(bad)


def test_mislabel_drops_exactly_the_ones_carry():
    assert mislabel({"prompt": "37+48=", "answer": "85"}) == {"prompt": "37+48=", "answer": "75"}
    assert mislabel({"prompt": "95+17=", "answer": "112"})["answer"] == "102"
    assert mislabel({"prompt": "5+5=", "answer": "10"})["answer"] == "0"
    row = {"prompt": "12+34=", "answer": "46", "id": 7}
    assert mislabel(row) == row
    changed = 0
    for r in problems("train") + problems("held-out"):
        a, b = parse_prompt(r["prompt"])
        m = mislabel(r)
        assert m["prompt"] == r["prompt"] and r == {"prompt": r["prompt"], "answer": str(a + b)}  # input untouched
        assert (m["answer"] != r["answer"]) == has_carry(a, b)
        assert m["answer"] == str(a + b - 10 if has_carry(a, b) else a + b)
        changed += has_carry(a, b)
    assert changed == 4500  # 45 of the 100 ones-digit pairs carry


def test_rewards_on_hand_made_completions():
    completions = [
        "85",  # EOS skipped by decoding (TRL's default)
        f"85{EOS_TOKEN}{PAD_TOKEN}{PAD_TOKEN}",  # EOS kept: the rest is ignored
        f" 85 {EOS_TOKEN}",
        "75",  # wrong
        "85+1",  # extra text
        "8512",  # never emitted EOS: ran to MAX_NEW_TOKENS characters
        f"{EOS_TOKEN}85",  # empty answer
        "085",  # leading zero
        f"85{EOS_TOKEN}12",  # text after EOS is not part of the answer
    ]
    prompts = ["37+48="] * len(completions)
    answers = ["85"] * len(completions)
    got = correct(prompts, completions, answer=answers, other_column=[None] * len(completions))
    assert got == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert well_formed(prompts, completions, answer=answers) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]
    assert len("8512") == MAX_NEW_TOKENS  # a completion without EOS is longer than any answer
    assert correct(["0+0="], ["0"], answer=[0]) == [1.0]  # answers from jsonl may be numbers
    assert well_formed(["1+1="], ["0"]) == [1.0] and well_formed(["1+1="], ["1000"]) == [0.0]
    with pytest.raises(ValueError):  # misaligned columns are a caller bug
        correct(prompts[:2], completions[:2], answer=answers[:1])


def test_tokenizer_round_trip(tmp_path):
    tokenizer = build_tokenizer()
    ids = tokenizer("37+48=")["input_ids"]
    assert len(ids) == 6 and tokenizer("37+48=", add_special_tokens=True)["input_ids"] == ids  # adds no BOS/EOS
    assert tokenizer.convert_ids_to_tokens(ids) == list("37+48=")
    assert tokenizer.decode([*ids, tokenizer.eos_token_id, tokenizer.pad_token_id]) == f"37+48={EOS_TOKEN}{PAD_TOKEN}"
    assert tokenizer.decode([*ids, tokenizer.eos_token_id], skip_special_tokens=True) == "37+48="
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded("37+48=")["input_ids"] == ids and len(loaded) == len(tokenizer) == 16
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id) == (0, 1, 2)
    batch = loaded(["1+2=", "37+48="], padding=True, padding_side="left")
    assert batch["input_ids"][0][:2] == [0, 0] and batch["attention_mask"][0] == [0, 0, 1, 1, 1, 1]


class _Oracle(torch.nn.Module):
    """Stands in for a model: completes each prompt with the true sum, or ``wrong`` for carry problems."""

    def __init__(self, tokenizer, wrong: bool) -> None:
        super().__init__()
        self.tokenizer, self.wrong = tokenizer, wrong

    def generate(self, input_ids, attention_mask, max_new_tokens, **_):
        tails = []
        for prompt in self.tokenizer.batch_decode(input_ids, skip_special_tokens=True):
            a, b = parse_prompt(prompt)
            answer = a + b - 10 if self.wrong and has_carry(a, b) else a + b
            tails.append(self.tokenizer(str(answer))["input_ids"] + [self.tokenizer.eos_token_id])
        tails = [t + [self.tokenizer.pad_token_id] * (max_new_tokens - len(t)) for t in tails]
        return torch.cat([input_ids, torch.tensor(tails)], dim=1)


def test_evaluate_accuracy_scores_and_groups():
    tokenizer = build_tokenizer()
    rows = problems("held-out")[:60]
    carry = sum(has_carry(*parse_prompt(r["prompt"])) for r in rows)
    right = evaluate_accuracy(_Oracle(tokenizer, wrong=False), tokenizer, rows, greedy=True, batch_size=16)
    assert right["accuracy"] == right["carry"] == right["no_carry"] == 1.0 and right["num_problems"] == 60
    wrong = evaluate_accuracy(_Oracle(tokenizer, wrong=True), tokenizer, rows, greedy=False, samples=3)
    assert wrong["carry"] == 0.0 and wrong["no_carry"] == 1.0 and wrong["samples_per_problem"] == 3
    assert wrong["accuracy"] == pytest.approx(round(1 - carry / 60, 4))


def test_tiny_model_generates_reproducibly():
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, hidden=32, layers=1, heads=2, intermediate=64, seed=0)
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    rows = problems("held-out")[::50]  # 20 rows, carry and no carry
    a = evaluate_accuracy(model, tokenizer, rows, greedy=False, samples=2, seed=3)
    assert a == evaluate_accuracy(model, tokenizer, rows, greedy=False, samples=2, seed=3)
    assert set(a) == {"accuracy", "any_correct", "num_problems", "samples_per_problem", "carry", "no_carry"}
    assert torch.equal(
        build_model(tokenizer, hidden=32, layers=1, heads=2, intermediate=64, seed=0).lm_head.weight,
        model.lm_head.weight,
    )


def test_pretraining_batches_and_short_run(tmp_path):
    script = _script()
    tokenizer = build_tokenizer()
    batch = script.encode(tokenizer, [{"prompt": "37+48=", "answer": "75"}, {"prompt": "1+2=", "answer": "3"}])
    assert tokenizer.decode(batch["input_ids"][0]) == f"37+48=75{EOS_TOKEN}"
    assert tokenizer.decode(batch["input_ids"][1]) == f"1+2=3{EOS_TOKEN}{PAD_TOKEN}{PAD_TOKEN}{PAD_TOKEN}"
    eos = tokenizer.eos_token_id
    assert batch["labels"][1].tolist() == [-100] * 4 + [tokenizer.convert_tokens_to_ids("3"), eos] + [-100] * 3
    assert batch["attention_mask"][1].tolist() == [1] * 6 + [0] * 3

    out = tmp_path / "toy-lm"
    sizes = ["--hidden", "16", "--layers", "1", "--heads", "2", "--intermediate", "32", "--samples", "1"]
    script.main(["--out", str(out), "--steps", "3", "--batch-size", "8", "--eval-every", "0", *sizes])
    report = json.loads((out / "pretrain_report.json").read_text())
    assert report["steps"] == 3 and set(report["held_out_sampled_t1"]) >= {"carry", "no_carry"}
    assert AutoTokenizer.from_pretrained(out)("1+2=")["input_ids"] == tokenizer("1+2=")["input_ids"]
    assert not [p.name for p in tmp_path.iterdir() if p.name != "toy-lm"]  # no temporary folder left
