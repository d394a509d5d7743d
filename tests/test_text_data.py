"""TRL users' data and options: prompt-only and conversational datasets from files and folders, the chat template
applied as TRL applies it, rewards called with TRL's arguments (async ones concurrently), TRL's GRPOConfig names,
truncated-completion masking and the continuous-batching engine."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re

import pytest
import torch

from flowrl.core.errors import ConfigError, DataError
from flowrl.text.data import PromptFormat, load_rows, prompt_key, prompt_label

CHAT = [{"role": "user", "content": "12+3="}]


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> str:
    """A tiny random Llama with the toy chat tokenizer (turn markers, ``<|end|>`` as EOS, a chat template)."""
    from flowrl.text.world import build_model, build_tokenizer

    path = str(tmp_path_factory.mktemp("chat-lm"))
    tokenizer = build_tokenizer(chat=True)
    build_model(tokenizer, hidden=32, layers=2, heads=2, intermediate=64).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _chat_rows(n: int) -> list[dict]:
    return [{"prompt": [{"role": "user", "content": f"{i}+{i}="}], "answer": str(2 * i), "level": i % 3}
            for i in range(n)]  # fmt: skip


def test_jsonl_and_json_rows_and_their_errors(tmp_path):
    from flowrl.text.world import problems

    assert load_rows("toy-text:held-out") == problems("held-out")
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "1+2=", "answer": "3"}\n\n{"prompt": "x", "level": 2}\n')
    assert load_rows(str(path)) == [{"prompt": "1+2=", "answer": "3"}, {"prompt": "x", "level": 2}]
    for line, message in [
        ('{"prompt": "1+2="', "not valid JSON"),
        ('{"answer": "3"}', "expected an object with a 'prompt'"),
        ('{"prompt": 3}', "'prompt' must be a string or a list of messages"),
        ('["1+2="]', "expected an object with a 'prompt'"),
        ('{"prompt": " "}', "empty 'prompt'"),
        ('{"prompt": [{"role": "user"}]}', "message 0 must be an object with a string 'role' and a 'content'"),
        ('{"prompt": [{"role": "user", "content": "1+2="}]}', "the prompt is a list of messages but the first"),
    ]:
        path.write_text(f'{{"prompt": "1+2="}}\n\n{line}\n')
        with pytest.raises(DataError, match=f"{re.escape(str(path))}:3: .*{re.escape(message)}"):
            load_rows(str(path))
    listed = tmp_path / "rows.json"
    listed.write_text(json.dumps(_chat_rows(2)))
    assert load_rows(str(listed)) == _chat_rows(2)
    listed.write_text('{"prompt": "x"}')
    with pytest.raises(DataError, match="expected a JSON list of objects"):
        load_rows(str(listed))
    with pytest.raises(DataError, match=r"unknown data source 'rows\.csv'"):
        load_rows("rows.csv")


def test_a_data_file_is_parsed_once_while_unchanged(tmp_path, monkeypatch):
    from flowrl.text import data as text_data

    parsed = []
    parse = text_data._jsonl_rows
    monkeypatch.setattr(text_data, "_jsonl_rows", lambda source: parsed.append(source) or parse(source))
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "1+2="}\n')
    first = load_rows(str(path))
    first.append({"prompt": "added by the caller"})
    assert load_rows(str(path)) == [{"prompt": "1+2="}] and len(parsed) == 1  # the config check, then setup
    path.write_text('{"prompt": "3+4="}\n')  # same size: the modification time tells
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert load_rows(str(path)) == [{"prompt": "3+4="}] and len(parsed) == 2


def test_dataset_folders_saved_to_disk_and_in_hub_format(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = _chat_rows(5)
    Dataset.from_list(rows).save_to_disk(str(tmp_path / "one"))
    assert load_rows(str(tmp_path / "one")) == rows
    DatasetDict({"train": Dataset.from_list(rows[:3]), "test": Dataset.from_list(rows[3:])}).save_to_disk(
        str(tmp_path / "dict")
    )
    assert load_rows(str(tmp_path / "dict"), "test") == rows[3:]
    with pytest.raises(DataError, match="no split 'validation'; it has train, test"):
        load_rows(str(tmp_path / "dict"), "validation")
    hub = tmp_path / "hub" / "data"  # a dataset repository as downloaded: split by file name
    hub.mkdir(parents=True)
    Dataset.from_list(rows[:4]).to_parquet(str(hub / "train-00000-of-00001.parquet"))
    Dataset.from_list(rows[4:]).to_parquet(str(hub / "test-00000-of-00001.parquet"))
    assert load_rows(str(tmp_path / "hub"), "train") == rows[:4]
    assert load_rows(str(tmp_path / "hub"), "test") == rows[4:]
    with pytest.raises(DataError, match=r"hub: .*validation"):
        load_rows(str(tmp_path / "hub"), "validation")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no dataset here"):
        load_rows(str(tmp_path / "empty"))


def test_chat_template_as_trl_applies_it(chat_dir):
    from transformers import AutoTokenizer
    from trl.data_utils import maybe_apply_chat_template

    from flowrl.text.model import tokenize_prompts

    tokenizer = AutoTokenizer.from_pretrained(chat_dir)
    plain = PromptFormat(conversational=True)
    text = plain.render(tokenizer, CHAT)
    assert text == "<bos><|user|>12+3=<|end|><|assistant|>"
    assert text == maybe_apply_chat_template({"prompt": CHAT}, tokenizer)["prompt"]
    # the ids TRL's GRPOTrainer feeds the model: apply_chat_template(tokenize=True), no special tokens on top
    ids, _ = tokenize_prompts(tokenizer, [text], torch.device("cpu"), add_special_tokens=plain.add_special_tokens)
    assert (
        ids[0].tolist() == tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True)["input_ids"]
    )
    assert ids[0, 0] == tokenizer.bos_token_id and (ids[0] == tokenizer.bos_token_id).sum() == 1  # one BOS
    system = PromptFormat(True, "you add.", {"enable_thinking": False})
    assert system.render(tokenizer, CHAT) == "<bos><|system|>you add.<|end|><|user|>12+3=<|end|><|assistant|>no think."
    own = [{"role": "system", "content": "be brief."}, *CHAT]  # a conversation's own system prompt is kept
    assert system.render(tokenizer, own).startswith("<bos><|system|>be brief.<|end|><|user|>")
    prefill = [*CHAT, {"role": "assistant", "content": "1"}]  # a started answer is continued, not closed
    assert plain.render(tokenizer, prefill) == "<bos><|user|>12+3=<|end|><|assistant|>1"
    assert plain.completions(["15"]) == [[{"role": "assistant", "content": "15"}]]
    assert PromptFormat().completions(["15"]) == ["15"] and PromptFormat().render(tokenizer, "1+2=") == "1+2="
    assert prompt_key(CHAT) == json.dumps(CHAT, sort_keys=True) and prompt_label(CHAT) == "12+3="


def test_conversational_data_needs_a_chat_template_before_the_model_loads(lm_dir, chat_dir, tmp_path):
    from tiny_runs import text_config

    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _chat_rows(3)))
    with pytest.raises(ConfigError, match=r"conversational .* has no chat template"):
        text_config(lm_dir, f"data.train={data}", f"data.eval={data}")
    with pytest.raises(ConfigError, match=r"data\.train's prompts are lists of messages but data\.eval's are strings"):
        text_config(chat_dir, f"data.train={data}", "data.eval=toy-text:held-out")
    from flowrl.text.trainer import setup

    with pytest.raises(ValueError, match="must both be strings or both lists of messages"):
        setup(text_config(chat_dir), dataset=_chat_rows(3))  # a Python dataset is checked when it arrives


class Recorder:
    """A reward that keeps what it was called with (TRL's arguments) and logs a metric."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, prompts, completions, completion_ids, trainer_state, log_metric, **columns):
        self.calls.append({"prompts": prompts, "completions": completions, "ids": completion_ids,
                           "step": trainer_state.global_step, "max": trainer_state.max_steps, **columns})  # fmt: skip
        log_metric("recorder/calls", float(len(self.calls)))
        return [float(len(c[0]["content"])) for c in completions]


def _pair_of_async_rewards():
    """Two async rewards that each wait for the other to start: they finish only if run concurrently."""
    started = {"a": None, "b": None}

    def make(me: str, other: str):
        async def reward(prompts, completions, **_):
            started[me] = started[me] or asyncio.Event()
            started[me].set()
            while started[other] is None:
                await asyncio.sleep(0.001)
            await asyncio.wait_for(started[other].wait(), timeout=10)
            return [1.0 if me == "a" else None] * len(prompts)

        reward.__name__ = f"async_{me}"
        return reward

    return make("a", "b"), make("b", "a")


def test_chat_training_calls_rewards_as_trl_does(chat_dir, tmp_path):
    from tiny_runs import text_config

    from flowrl.text.trainer import setup, train_step

    data = tmp_path / "chat.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in _chat_rows(6)))
    cfg = text_config(chat_dir, f"data.train={data}", f"data.eval={data}", "data.system_prompt=you add.",
                      "generation.max_new_tokens=6", "train.iterations=3")  # fmt: skip
    recorder = Recorder()
    run = setup(cfg, reward_funcs=[recorder, *_pair_of_async_rewards()])
    metrics = train_step(run)
    (call,) = recorder.calls
    n = cfg.train.prompts_per_step * cfg.train.group_size
    assert len(call["prompts"]) == n and all(p[0]["role"] == "user" for p in call["prompts"])  # as given
    assert all(c[0]["role"] == "assistant" and isinstance(c[0]["content"], str) for c in call["completions"])
    assert call["step"] == 0 and call["max"] == 3 and len(call["level"]) == n and len(call["answer"]) == n
    end = run.tokenizer.eos_token_id
    for ids in call["ids"]:  # padding dropped, cut after the first EOS
        assert all(isinstance(i, int) for i in ids) and 1 <= len(ids) <= 6 and end not in ids[:-1]
        assert len(ids) == 6 or ids[-1] == end
    assert metrics["recorder/calls"] == 1.0
    assert metrics["reward/async_a"] == 1.0 and math.isnan(metrics["reward/async_b"])


def test_a_failing_async_reward_is_named(lm_dir):
    from tiny_runs import text_config

    from flowrl.core.errors import RewardError
    from flowrl.text.trainer import setup, train_step

    async def judge(prompts, completions, **_):
        raise TimeoutError("the judge did not answer")

    run = setup(text_config(lm_dir), reward_funcs=[judge])
    with pytest.raises(RewardError, match="reward 'judge' raised TimeoutError: the judge did not answer"):
        train_step(run)


def trl_config(path: str, trl: str, *overrides: str):
    """A text preset whose batch, sampling and loss are set by TRL's GRPOConfig names only."""
    from flowrl.recipes import load_config

    rewards = "rewards=[{name: 'toy-text:correct'}, {name: 'toy-text:well_formed'}]"
    return load_config(None, ["backend=text", f"model.path={path}", rewards, f"trl={trl}", *overrides])


def test_trl_config_names_translate_and_are_checked(lm_dir, monkeypatch):
    cfg = trl_config(lm_dir, "{loss_type: cispo, epsilon: 0.1, epsilon_high: 5.0, beta: 0.02, num_generations: 4, "
                     "scale_rewards: batch, importance_sampling_level: sequence, top_entropy_quantile: 0.2, "
                     "mask_truncated_completions: true, reward_weights: [1.0, 0.25], generation_batch_size: 12, "
                     "per_device_train_batch_size: 6, learning_rate: 3.0e-6, max_completion_length: 4, "
                     "max_steps: 10, bf16: false}")  # fmt: skip
    assert (cfg.loss.name, cfg.loss.clip_low, cfg.loss.clip_high, cfg.loss.kl_coef) == ("cispo", 0.1, 5.0, 0.02)
    assert (cfg.advantage.name, cfg.loss.importance_sampling_level, cfg.loss.top_entropy_quantile) == (
        "global-std", "sequence", 0.2)  # fmt: skip
    # 12 completions = 3 prompts of 4, in 12 / 6 = 2 optimizer steps of 6 (one each: no accumulation)
    assert cfg.train.group_size == 4 and cfg.train.prompts_per_step == 3 and cfg.train.minibatches == 2
    assert cfg.train.micro_batch == 6 and cfg.train.iterations == 5  # 10 optimizer steps, 2 per iteration
    assert cfg.train.mask_truncated_completions and cfg.train.lr == 3e-6 and cfg.generation.max_new_tokens == 4
    assert [r.weight for r in cfg.rewards] == [1.0, 0.25]
    assert cfg.output.metric_names == "trl"  # a TRL user reads TRL's metric names, unless the config says otherwise
    short = "max_completion_length: 4"  # the 16-position test model leaves room for 4 tokens
    assert trl_config(lm_dir, f"{{{short}}}", "output.metric_names=flowrl").output.metric_names == "flowrl"
    gdpo = trl_config(lm_dir, f"{{multi_objective_aggregation: normalize_then_sum, scale_rewards: none, {short}}}")
    assert gdpo.advantage.name == "gdpo"  # TRL ignores scale_rewards then
    assert trl_config(lm_dir, f"{{epsilon: 0.3, {short}}}").loss.clip_high == 0.3  # epsilon_high defaults to it
    accumulated = trl_config(lm_dir, f"{{per_device_train_batch_size: 4, gradient_accumulation_steps: 2, {short}}}")
    assert accumulated.train.prompts_per_step == 1 and accumulated.train.minibatches == 1  # 8 = 4 × 2, one step
    monkeypatch.setenv("WORLD_SIZE", "2")
    per_device = trl_config(lm_dir, f"{{per_device_train_batch_size: 4, num_generations: 4, {short}}}")
    assert per_device.train.prompts_per_step == 2 and per_device.train.micro_batch == 4  # 4 × 2 processes / 4
    monkeypatch.delenv("WORLD_SIZE")
    for trl, message in [
        ("{loss_type: vespo}", "trl.loss_type='vespo' is not supported: not implemented in flowrl"),
        ("{use_vllm: true}", "trl.use_vllm=True is not supported: flowrl generates with transformers"),
        ("{epsilon_hi: 0.3}", "trl.epsilon_hi is not a GRPOConfig field flowrl reads; did you mean trl.epsilon_high?"),
        ("{num_generation: 4}", "trl.num_generation is not a GRPOConfig field flowrl reads; did you mean trl.num_"),
        ("{use_vlm: true}", "did you mean trl.use_vllm?"),  # a field flowrl refuses is still the likely one meant
        ("{zzz: 1}", "trl.zzz is not a GRPOConfig field flowrl reads; it reads: beta, cache_implementation, "),
        ("{num_generation: 4}", "did you mean trl.num_generations?"),
        ("{scale_rewards: sometimes}", "trl.scale_rewards='sometimes' is not one of"),
        ("{reward_weights: [1.0]}", "one weight per reward function (2 in rewards)"),
        ("{generation_batch_size: 10, per_device_train_batch_size: 5}", "multiple of num_generations 8"),
        ("{generation_batch_size: 16, steps_per_generation: 2}", "not both"),
        (
            "{per_device_train_batch_size: 4, gradient_accumulation_steps: 2, max_steps: 3, num_iterations: 2}",
            "trl.max_steps=3 counts optimizer steps; an iteration makes 2 of them",
        ),
        ("{top_entropy_quantile: 1.5, max_completion_length: 4}", "loss.top_entropy_quantile"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            trl_config(lm_dir, trl)
    with pytest.raises(ConfigError, match=re.escape("loss.kl_coef is set twice")):
        trl_config(lm_dir, "{beta: 0.1}", "loss.kl_coef=0.2")


def test_truncated_completions_keep_their_rewards_but_train_no_token(lm_dir):
    from types import SimpleNamespace

    from flowrl.text.model import Completions
    from flowrl.text.trainer import loss_mask

    ids = torch.tensor([[5, 2, 0], [5, 6, 7]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    c = Completions(ids[:, :1], torch.ones(2, 1), ids, mask, torch.tensor([0, 0]), torch.tensor([True, False]), [])
    on = SimpleNamespace(cfg=SimpleNamespace(train=SimpleNamespace(mask_truncated_completions=True)))
    assert loss_mask(on, c).tolist() == [[1, 1, 0], [0, 0, 0]]
    on.cfg.train.mask_truncated_completions = False
    assert loss_mask(on, c) is mask


def test_continuous_batching_samples_the_policy_distribution(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flowrl.text.model import sample_completions, sample_continuous, token_log_probs

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    sampling = {"max_new_tokens": 3, "temperature": 1.3, "add_special_tokens": False}
    batching = {"num_blocks": 64, "max_batch_tokens": 512}
    n = 800
    model.train()
    c = sample_continuous(model, tokenizer, ["1+2=", "45+"], [n, 2], seed=5, options=batching, **sampling)
    assert model.training  # the batching manager's eval() is undone
    assert c.index.tolist() == [0] * n + [1] * 2 and c.completion_ids.shape[0] == n + 2
    model.eval()
    torch.manual_seed(5)
    g = sample_completions(model, tokenizer, ["1+2="], n, **sampling)
    # the first token's frequencies under both engines match the policy's softmax(logits / T)
    log_prob, _ = token_log_probs(model, g.prompt_ids, g.prompt_mask, g.completion_ids[:1], g.completion_mask[:1],
                                  g.index[:1], temperature=1.3, shared_prefix=False)  # fmt: skip
    with torch.no_grad():
        logits = model(input_ids=g.prompt_ids, attention_mask=g.prompt_mask).logits[0, -1] / 1.3
    p = logits.softmax(-1)
    assert torch.isclose(p[g.completion_ids[0, 0]].log(), log_prob[0, 0], atol=1e-5)
    for ids in (c.completion_ids[:n, 0], g.completion_ids[:, 0]):
        freq = torch.bincount(ids, minlength=p.numel()).double() / n
        # each token's frequency within 4 binomial standard errors of its probability (plus 0.5% slack)
        assert ((freq - p.double()).abs() <= 4 * (p * (1 - p) / n).sqrt().double() + 0.005).all()
    assert c.completion_mask.shape == c.completion_ids.shape and (c.completion_mask.sum(1) >= 1).all()


def test_a_static_cache_samples_the_same_completions(lm_dir):
    from tiny_runs import text_config
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flowrl.text.model import sample_completions

    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir).eval()
    prompts = ["1+2=", "45+67="]  # left padding: the static cache masks the padded positions too
    runs = []
    for cache in (None, "static", None):
        sampled = sample_completions(model, tokenizer, prompts, 6, max_new_tokens=4, temperature=1.0,
                                     generator_seed=3, cache_implementation=cache)  # fmt: skip
        runs.append(sampled.completion_ids)
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[1], runs[2])
    assert len({tuple(r) for r in runs[0].tolist()}) > 2  # sampled, not all alike
    assert text_config(lm_dir, "trl={cache_implementation: static}").generation.cache_implementation == "static"
    from flowrl.text.run import evaluate
    from flowrl.text.trainer import setup, train_step

    run = setup(text_config(lm_dir, "generation.cache_implementation=static"))
    calls, generate = [], run.model.generate
    run.model.generate = lambda **kw: calls.append(kw.get("cache_implementation")) or generate(**kw)
    train_step(run)
    evaluate(run, run.eval_rows[:2])  # evaluation samples with the same cache
    assert calls == ["static", "static"]
    for overrides, message in [
        (["generation.cache_implementation=paged"], "generation.cache_implementation='paged' is not one of static"),
        (["generation.cache_implementation=static", "generation.engine=continuous"],
         "generation.cache_implementation is read only with generation.engine=generate"),
    ]:  # fmt: skip
        with pytest.raises(ConfigError, match=re.escape(message)):
            text_config(lm_dir, *overrides)


def test_the_paged_cache_is_sized_for_the_batch_unless_the_options_size_it(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flowrl.text.model import _cache_size, sample_continuous

    requests = [[1] * 10, [1] * 300]
    assert _cache_size(requests, 64, {})["num_blocks"] == 1 + 2  # 74 and 364 tokens in pages of 256
    assert _cache_size(requests, 64, {"page_size": 64}) == {"page_size": 64, "num_blocks": 2 + 6}
    for sized in ({"num_blocks": 5}, {"max_memory_percent": 0.5}):  # TRL's choice, when asked for
        assert _cache_size(requests, 64, sized) == sized
    tokenizer = AutoTokenizer.from_pretrained(lm_dir)
    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    c = sample_continuous(model, tokenizer, ["1+2=", "45+67="], 3, max_new_tokens=4, add_special_tokens=False)
    assert c.completion_ids.shape[0] == 6 and (c.completion_mask.sum(1) >= 1).all()


def test_a_training_step_with_the_continuous_engine(lm_dir):
    from tiny_runs import text_config

    from flowrl.text.trainer import setup, train_step

    cfg = text_config(lm_dir, "generation.engine=continuous",
                      "generation.continuous_options={num_blocks: 64, max_batch_tokens: 256}")  # fmt: skip
    run = setup(cfg)
    before = [p.detach().clone() for p in run.params]
    metrics = train_step(run)
    assert metrics["completions/mean_length"] > 0 and metrics["train/skipped_steps"] == 0
    assert any(not torch.equal(a, b) for a, b in zip(before, run.params, strict=True))
    with pytest.raises(ConfigError, match="num_block not ContinuousBatchingConfig fields"):
        text_config(lm_dir, "generation.engine=continuous", "generation.continuous_options={num_block: 4}")
    with pytest.raises(ConfigError, match=r"read only with generation\.engine=continuous"):
        text_config(lm_dir, "generation.continuous_options={num_blocks: 4}")


def _trl_advantages(rewards: torch.Tensor, weights: torch.Tensor, group: int, scale: str, gdpo: bool):
    """TRL 1.16's advantage rules, written from its grpo_trainer.py (sum_then_normalize with scale_rewards, or
    normalize_then_sum): contiguous groups of ``group`` rows, Bessel's std, + 1e-4."""
    g = lambda x: x.view(-1, group)  # noqa: E731
    if gdpo:
        parts = [(g(c) - g(c).mean(1, keepdim=True)) / (g(c).std(1, keepdim=True) + 1e-4) for c in rewards.T]
        total = sum(w * p.flatten() for w, p in zip(weights, parts, strict=True))
        return (total - total.mean()) / (total.std() + 1e-4)
    total = (rewards * weights).sum(1)
    std = g(total).std(1, keepdim=True).expand(-1, group).flatten() if scale == "group" else total.std()
    adv = total - g(total).mean(1, keepdim=True).expand(-1, group).flatten()
    return adv if scale == "none" else adv / (std + 1e-4)


@pytest.mark.parametrize(("scale", "gdpo"), [("group", False), ("batch", False), ("none", False), ("group", True)])
def test_text_advantages_follow_trls_rules(lm_dir, scale, gdpo):
    from flowrl.core.advantages import AdvantageBatch, compute_advantages

    g = torch.Generator().manual_seed(0)
    rewards = torch.randint(0, 3, (12, 2), generator=g).float()
    rewards[8:] = 1.0  # a group with every reward constant
    weights = torch.tensor([1.0, 0.5])
    cfg = trl_config(lm_dir, f"{{scale_rewards: {scale}, max_completion_length: 4"
                     + (", multi_objective_aggregation: normalize_then_sum}" if gdpo else "}"))  # fmt: skip
    batch = AdvantageBatch(rewards=rewards, group_id=torch.arange(3).repeat_interleave(4), weights=weights)
    ours = compute_advantages(cfg.advantage.name, batch, cfg.advantage, {}).advantages
    theirs = _trl_advantages(rewards, weights, 4, scale, gdpo)
    if gdpo:  # flowrl gives a group constant in every reward 0; TRL gives it (0 − batch mean) / batch std
        assert torch.allclose(ours[:8], theirs[:8], atol=1e-5) and (ours[8:] == 0).all()
    else:
        assert torch.allclose(ours, theirs, atol=1e-5), (ours, theirs)
