"""Bad input through the real command line (``flowrl.cli.main`` in-process): config, data files, reward functions
and reward-server replies. Each case must exit with code 2, print one ``flowrl: <kind> error: ...`` line naming the
key, file, reward or server (no traceback), and leave no run folder behind.

Reward failures happen after the run folder is made; removing it is the run driver's job (issue 8). Until that is
in, those cases check message and exit code and then xfail on the leftover folder (see ``assert_no_run_folder``).
"""

from __future__ import annotations

import json
import logging
import math
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

import flowrl.rewards.http as rhttp
from flowrl.cli import main
from flowrl.core.errors import DataError, RewardError, TrainingStopped
from flowrl.rewards import RewardSet, make_reward

ROOT = Path(__file__).resolve().parents[1]

#: a flow run that stops after one iteration of 2 prompts × 2 images, 4 steps, no evaluation, nothing extra written
FLOW = [
    "train", "--config", str(ROOT / "configs" / "demo.yaml"), f"model.path={ROOT / 'assets' / 'toy-sd3'}",
    "train.iterations=1", "train.prompts_per_step=2", "train.group_size=2", "train.micro_batch=8",
    "sampler.num_steps=4", "sampler.window_size=2", "sampler.window_options={max_start: 1}", "eval.enabled=false",
    "output.progress=false", "output.tensorboard=false",
]  # fmt: skip
#: the text backend's equivalent: 2 prompts × 2 completions
TEXT = [
    "train", "--config", str(ROOT / "configs" / "text_demo.yaml"), f"model.path={ROOT / 'assets' / 'toy-lm'}",
    "train.iterations=1", "train.prompts_per_step=2", "train.group_size=2", "eval.enabled=false",
    "output.progress=false", "output.tensorboard=false",
]  # fmt: skip


@dataclass
class Ctx:
    """What a case's arguments may refer to: a scratch folder and the bad reward server's address."""

    tmp: Path
    url: str = ""

    def file(self, name: str, content: str | bytes) -> str:
        path = self.tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return str(path)


@dataclass
class Case:
    base: list[str]  # FLOW or TEXT
    args: Callable[[Ctx], list[str]]  # overrides (and options) after the base
    kind: str  # config, data, reward
    words: Callable[[Ctx], list[str]]  # what the error line must contain
    runtime: bool = False  # fails after the run folder exists (a reward or server failure)


def rewards(name: str, **options) -> str:
    """The ``rewards=`` override for one flow reward."""
    return "rewards=" + json.dumps([{"name": name, "options": options}])


def text_rewards(name: str) -> str:
    return "rewards=" + json.dumps([{"name": name}])


def data_file(key: str, name: str, content: str | bytes) -> Callable[[Ctx], list[str]]:
    """The override ``key=<a file written with content>``."""
    return lambda c: [f"{key}={c.file(name, content)}"]


def same(*words: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: list(words)


BAD_UTF8 = b"a red cube\n\xff\xfe two cats\n"

CONFIG_CASES = {
    "unknown key": Case(FLOW, lambda c: ["train.lrr=1"], "config", same("unknown config key train.lrr", "train.lr?")),
    "unknown nested key": Case(
        FLOW,
        lambda c: ["sampler.windw_size=2"],
        "config",
        same("sampler.windw_size", "did you mean sampler.window_size"),
    ),
    "wrong type": Case(
        FLOW, lambda c: ["train.iterations=many"], "config", same("train.iterations: expected int, got 'many'")
    ),
    "wrong type bool": Case(
        FLOW, lambda c: ["output.progress=sometimes"], "config", same("output.progress: expected true or false")
    ),
    "out of range": Case(FLOW, lambda c: ["train.lr=-0.1"], "config", same("train.lr: must be >= 0.0, got -0.1")),
    "group size below 2": Case(
        FLOW, lambda c: ["train.group_size=1"], "config", same("train.group_size: must be >= 2, got 1")
    ),
    "bad choice": Case(
        FLOW,
        lambda c: ["sampler.mode=flow-grop"],
        "config",
        same("sampler.mode: 'flow-grop'", "did you mean 'flow-grpo'"),
    ),
    "window longer than steps": Case(
        FLOW, lambda c: ["sampler.window_size=6"], "config", same("sampler.window_size=6", "sampler.num_steps=4")
    ),
    "tree leaves differ from group": Case(
        FLOW,
        lambda c: ["sampler.mode=branchgrpo", "sampler.branchgrpo.split_steps=[0,2]", "train.group_size=6"],
        "config",
        same("4 leaves per prompt", "train.group_size=6"),
    ),
    "split step twice": Case(
        FLOW,
        lambda c: ["sampler.mode=branchgrpo", "sampler.branchgrpo.split_steps=[1,1]", "train.group_size=4"],
        "config",
        same("sampler.branchgrpo.split_steps [1, 1] lists a step twice"),
    ),
    "strata naming no reward": Case(
        FLOW,
        lambda c: ["advantage.name=stratified", "advantage.strata=clip/objects"],
        "config",
        same("advantage.strata='clip/objects' names no configured reward's component"),
    ),
    "missing model path": Case(
        FLOW,
        lambda c: [f"model.path={c.tmp / 'no-model'}"],
        "config",
        lambda c: [f"model.path {str(c.tmp / 'no-model')!r} is neither a directory nor a hub id"],
    ),
    "model folder without model_index.json": Case(  # found when the model loads
        FLOW,
        lambda c: [f"model.path={c.tmp / 'empty-model'}"],
        "config",
        lambda c: [f"model path {str(c.tmp / 'empty-model')!r} has no model_index.json"],
        runtime=True,
    ),
    "missing config file": Case(
        ["train", "--config"],
        lambda c: [str(c.tmp / "nope.yaml")],
        "config",
        lambda c: ["nope.yaml", "does not exist"],
    ),
    "config file not YAML": Case(
        ["train", "--config"],
        lambda c: [c.file("broken.yaml", "train: [1, 2\n")],
        "config",
        same("broken.yaml", "is not valid YAML"),
    ),
    "override without =": Case(
        FLOW, lambda c: ["train.lr"], "config", same("override 'train.lr' must look like key=value")
    ),
    "unknown backend": Case(
        FLOW, lambda c: ["backend=txt"], "config", same("backend: 'txt' is not one of flow, text")
    ),
    "missing prompt file": Case(
        FLOW,
        lambda c: [f"data.train_prompts={c.tmp / 'prompts.txt'}"],
        "config",
        lambda c: ["data.train_prompts", f"{str(c.tmp / 'prompts.txt')!r} does not exist"],
    ),
    "unknown toy prompt set": Case(
        FLOW,
        lambda c: ["data.eval_prompts=toy:test"],
        "config",
        same("data.eval_prompts", "'toy:test'", "toy:held-out"),
    ),
    "unknown reward": Case(
        FLOW, lambda c: [rewards("toy-genevl")], "config", same("rewards[0].name: 'toy-genevl'", "'toy-geneval'?")
    ),
    "reward listed twice": Case(
        FLOW,
        lambda c: ["rewards=[{name: toy-geneval}, {name: toy-geneval, weight: 2}]"],
        "config",
        same("rewards[1].name: 'toy-geneval' is listed twice"),
    ),
    "reward label given twice": Case(
        FLOW,
        lambda c: ["rewards=[{name: toy-geneval, label: a}, {name: jpeg-compressibility, label: a}]"],
        "config",
        same("rewards[1].label: 'a' is listed twice"),
    ),
    "reward label with a slash": Case(
        FLOW, lambda c: ["rewards=[{name: toy-geneval, label: a/b}]"], "config", same("rewards[0].label: 'a/b'")
    ),
    "unknown reward option": Case(
        FLOW,
        lambda c: [rewards("jpeg-compressibility", qualty=80)],
        "config",
        same("rewards[0].options", "'jpeg-compressibility' has no option 'qualty'", "quality"),
    ),
    "reward module missing": Case(
        FLOW,
        lambda c: [rewards("no_such_module:score")],
        "config",
        same("rewards[0].name", "cannot import 'no_such_module:score'", "No module named 'no_such_module'"),
    ),
    "reward function missing": Case(
        FLOW, lambda c: [rewards("bad_rewards:nope")], "config", same("rewards[0].name", "has no attribute 'nope'")
    ),
    "reward not callable": Case(
        FLOW, lambda c: [rewards("bad_rewards:NOT_CALLABLE")], "config", same("'bad_rewards:NOT_CALLABLE' is a int")
    ),
    "user reward option unknown": Case(
        FLOW,
        lambda c: [rewards("bad_rewards:Brightness", gain=2)],
        "config",
        same("rewards[0].options", "'bad_rewards:Brightness' has no option 'gain'", "scale"),
    ),
    "run folder holds a finished run": Case(
        FLOW, lambda c: [], "config", lambda c: ["output.run_dir", "already holds a finished run"]
    ),
    # the text backend
    "text unknown key": Case(
        TEXT,
        lambda c: ["generation.max_new_token=4"],
        "config",
        same("generation.max_new_token", "did you mean generation.max_new_tokens"),
    ),
    "text group size below 2": Case(
        TEXT, lambda c: ["train.group_size=1"], "config", same("train.group_size: must be >= 2")
    ),
    "text completion longer than the model": Case(
        TEXT,
        lambda c: ["generation.max_new_tokens=16"],
        "config",
        same("generation.max_new_tokens=16 leaves no room for a prompt", "max_position_embeddings"),
    ),
    "text unknown toy reward": Case(
        TEXT,
        lambda c: [text_rewards("toy-text:corect")],
        "config",
        same("rewards[0].name: 'toy-text:corect'", "correct"),
    ),
    "text config with an image reward": Case(
        TEXT,
        lambda c: [text_rewards("toy-geneval")],
        "config",
        same("rewards[0].name: 'toy-geneval' scores images, and this recipe trains on text completions"),
    ),
    "text reward module missing": Case(
        TEXT, lambda c: [text_rewards("no_such_module:f")], "config", same("rewards[0].name", "cannot import")
    ),
    "text missing model path": Case(
        TEXT,
        lambda c: [f"model.path={c.tmp / 'lm'}"],
        "config",
        same("model.path", "neither a directory nor a hub id"),
    ),
    "text missing data file": Case(
        TEXT,
        lambda c: [f"data.train={c.tmp / 'rows.jsonl'}"],
        "config",
        lambda c: ["data.train", f"{str(c.tmp / 'rows.jsonl')!r} does not exist"],
    ),
    "text data file not jsonl": Case(
        TEXT,
        data_file("data.eval", "rows.csv", "prompt\n1+2=\n"),
        "config",
        same("data.eval", "rows.csv", ".jsonl", ".json"),
    ),
    "text unknown toy split": Case(
        TEXT, lambda c: ["data.train=toy-text:dev"], "config", same("data.train", "'toy-text:dev'")
    ),
    # methods the registries list but a run cannot feed: refused before any model loads
    "mode whose window takes other options": Case(
        FLOW,
        lambda c: ["sampler.mode=flow-grpo", "sampler.window_size=0"],
        "config",
        same("sampler.window_options {'max_start': 1} do not fit the 'fixed' window", "its options: start"),
    ),
    "stratified without strata": Case(
        FLOW,
        lambda c: ["advantage.name=stratified"],
        "config",
        same("advantage.name=stratified needs strata", "set advantage.strata"),
    ),
    "pairwise without preferences": Case(
        FLOW,
        lambda c: ["advantage.name=pairwise"],
        "config",
        same("advantage.name=pairwise needs pairwise", "vlm-judge, vlm-video-judge in its pairwise mode"),
    ),
    "median with an even group": Case(
        FLOW, lambda c: ["advantage.name=median"], "config", same("needs odd groups", "group size is 2; use 3")
    ),
    "multi-granularity without coarser decodings": Case(
        FLOW,
        lambda c: ["advantage.name=multi-granularity"],
        "config",
        same("needs granular_rewards", "set sampler.extra_tail_steps"),
    ),
    "tree estimator on chains": Case(
        FLOW,
        lambda c: ["advantage.name=tree"],
        "config",
        same("advantage.name=tree needs tree", "branchgrpo, branchgrpo-mix, singular"),
    ),
    "text tree estimator": Case(
        TEXT, lambda c: ["advantage.name=tree"], "config", same("needs tree", "only for flow rollouts")
    ),
    "text multi-granularity": Case(
        TEXT, lambda c: ["advantage.name=multi-granularity"], "config", same("needs granular_rewards")
    ),
    "text flow loss": Case(TEXT, lambda c: ["loss.name=ppo-clip"], "config", same("loss.name: 'ppo-clip'")),
}

DATA_CASES = {
    "empty prompt file": Case(
        FLOW, data_file("data.train_prompts", "empty.txt", ""), "data", same("empty.txt", "has no prompts")
    ),
    "prompt file of comments": Case(
        FLOW,
        data_file("data.eval_prompts", "comments.txt", "# todo\n\n   \n# later\n"),
        "data",
        same("comments.txt", "has no prompts"),
    ),
    "prompt file not UTF-8": Case(
        FLOW,
        data_file("data.train_prompts", "latin1.txt", BAD_UTF8),
        "data",
        same("latin1.txt", "is not UTF-8 text (line 2, byte 11)"),
    ),
    "jsonl line not JSON": Case(
        TEXT,
        data_file("data.train", "rows.jsonl", '{"prompt": "1+2="}\n{"prompt": "2+2="\n'),
        "data",
        same("rows.jsonl:2: not valid JSON"),
    ),
    "jsonl row without prompt": Case(
        TEXT,
        data_file("data.eval", "rows.jsonl", '{"question": "1+2="}\n'),
        "data",
        same("rows.jsonl:1: expected an object with a 'prompt'"),
    ),
    "jsonl empty prompt": Case(
        TEXT, data_file("data.eval", "rows.jsonl", '\n{"prompt": " "}\n'), "data", same("rows.jsonl:2: empty 'prompt'")
    ),
    "jsonl not UTF-8": Case(
        TEXT,
        data_file("data.train", "rows.jsonl", b'{"prompt": "1+2="}\n{"prompt": "\xe9"}\n'),
        "data",
        same("rows.jsonl' is not UTF-8 text (line 2"),
    ),
    "jsonl without rows": Case(
        TEXT, data_file("data.train", "rows.jsonl", "\n\n"), "data", same("rows.jsonl", "has no rows")
    ),
}


def flow_reward_case(name: str, *words: str, **options) -> Case:
    return Case(FLOW, lambda c: [rewards(f"bad_rewards:{name}", **options)], "reward", same(*words), runtime=True)


REWARD_CASES = {
    "reward raises": flow_reward_case(
        "raises", "reward 'bad_rewards:raises' raised ValueError: detector weights missing"
    ),
    "reward returns a tensor": flow_reward_case(
        "not_a_dict", "reward 'bad_rewards:not_a_dict' must return a dict with a 'score'", "got Tensor"
    ),
    "reward without score": flow_reward_case(
        "no_score", "reward 'bad_rewards:no_score' returned a dict without 'score' (keys: value)"
    ),
    "reward wrong shape": flow_reward_case(
        "wrong_shape", "reward 'bad_rewards:wrong_shape' returned 'score' of shape [4, 3]; expected [4]"
    ),
    "reward too few scores": flow_reward_case("too_few", "'bad_rewards:too_few' returned 'score' of shape [3]"),
    "reward strings": flow_reward_case("strings", "'bad_rewards:strings' returned 'score' as list, not numbers"),
    "reward scalar": flow_reward_case("scalar", "'bad_rewards:scalar' returned 'score' of shape []; expected [4]"),
    "reward complex": flow_reward_case("complex_scores", "'bad_rewards:complex_scores'", "dtype torch.complex64"),
    "reward bad diagnostic": flow_reward_case(
        "bad_diagnostic", "'bad_rewards:bad_diagnostic' returned 'debug' as str"
    ),
    "reward checkpoint missing": Case(
        FLOW,
        lambda c: [rewards("hpsv2", checkpoint=str(c.tmp / "HPS_v2.1.pt"))],
        "reward",
        lambda c: [f"reward 'hpsv2': options.checkpoint {str(c.tmp / 'HPS_v2.1.pt')!r} does not exist"],
        runtime=True,
    ),
    "reward class constructor raises": flow_reward_case(
        "BrokenInit",
        "reward 'bad_rewards:BrokenInit' could not be built",
        "RuntimeError: cannot open the reward model",
    ),
    "text reward raises": Case(
        TEXT,
        lambda c: [text_rewards("bad_rewards:text_raises")],
        "reward",
        same("reward 'text_raises' raised KeyError"),
        True,
    ),
    "text reward too few values": Case(
        TEXT,
        lambda c: [text_rewards("bad_rewards:text_short")],
        "reward",
        same("reward 'text_short' returned 3 values for 4 completions"),
        True,
    ),
    "text reward strings": Case(
        TEXT,
        lambda c: [text_rewards("bad_rewards:text_strings")],
        "reward",
        same("reward 'text_strings' must return floats or None, got '1'"),
        True,
    ),
    "text reward scalar": Case(
        TEXT,
        lambda c: [text_rewards("bad_rewards:text_scalar")],
        "reward",
        same("reward 'text_scalar' must return a list of floats or None", "got float"),
        True,
    ),
    "text reward column missing from the data": Case(
        TEXT,
        data_file("data.train", "rows.jsonl", '{"prompt": "1+2="}\n{"prompt": "3+4="}\n'),
        "reward",
        same("reward 'correct' raised TypeError", "answer"),
        True,
    ),
}


def remote_case(reply: str, *words: str, retries: int = 0) -> Case:
    def args(c: Ctx) -> list[str]:
        return [rewards("remote", url=f"{c.url}/{reply}", retries=retries, backoff=0.0, timeout=10.0)]

    return Case(FLOW, args, "reward", lambda c: ["reward 'remote'", f"{c.url}/{reply}/score", *words], runtime=True)


SERVER_CASES = {
    "server reply not JSON": remote_case("html", "body that is not JSON", "<html>"),
    "server reply a JSON list": remote_case("list", "returned JSON list, expected an object"),
    "server reply without outputs": remote_case("no-outputs", "response has no 'outputs' object"),
    "server reply without score": remote_case("no-score", "outputs have no 'score' (keys: aesthetic)"),
    "server reply wrong length": remote_case("short", "outputs['score'] has 1 values for 4 images"),
    "server reply strings": remote_case("strings", "outputs['score'] is not a list of numbers"),
    "server answers 400": remote_case("bad-request", "HTTP 400: prompts: expected a list of strings"),
    "server answers 500 after retries": remote_case(
        "broken", "HTTP 500: reward 'x' failed: CUDA out of memory", "gave up after 2 attempts", retries=1
    ),
}

CASES = {**CONFIG_CASES, **DATA_CASES, **REWARD_CASES, **SERVER_CASES}


class BadReplies(BaseHTTPRequestHandler):
    """``POST /<reply>/score``: a malformed answer chosen by the path."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n = len(body["prompts"])
        reply = self.path.strip("/").split("/")[0]
        status, payload = 200, None
        if reply == "html":
            payload = b"<html>busy</html>"
        elif reply == "list":
            payload = [1.0] * n
        elif reply == "no-outputs":
            payload = {"scores": [1.0] * n}
        elif reply == "no-score":
            payload = {"outputs": {"aesthetic": [1.0] * n}}
        elif reply == "short":
            payload = {"outputs": {"score": [1.0]}}
        elif reply == "strings":
            payload = {"outputs": {"score": ["high"] * n}}
        elif reply == "bad-request":
            status, payload = 400, {"error": "prompts: expected a list of strings"}
        elif reply == "broken":
            status, payload = 500, {"error": "reward 'x' failed: CUDA out of memory"}
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def bad_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), BadReplies)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Exit code and the one ``flowrl:`` line; no traceback, and that line is the last thing on stderr."""
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.startswith("flowrl:")]
    assert len(lines) == 1, err
    assert err.rstrip("\n").endswith(lines[0])
    return code, lines[0]


def assert_no_run_folder(run_dir: Path, runtime: bool) -> None:
    """Config and data errors come before the run folder; for failures during training the run driver removes
    the folder it made (pending: then this xfails rather than fails)."""
    if runtime and run_dir.exists():
        pytest.xfail("run-folder cleanup pending")
    assert not run_dir.exists(), sorted(p.name for p in run_dir.iterdir())


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(name: str, tmp_path: Path, bad_server: str, capsys, monkeypatch) -> None:
    monkeypatch.setattr(rhttp, "_sleep", lambda seconds: None)
    case = CASES[name]
    ctx = Ctx(tmp_path, bad_server)
    run_dir = tmp_path / "run"
    finished = name == "run folder holds a finished run"
    (tmp_path / "empty-model").mkdir()
    if finished:
        run_dir.mkdir()
        (run_dir / "summary.json").write_text("{}")
    code, line = run_cli([*case.base, *case.args(ctx), f"output.run_dir={run_dir}"], capsys)
    assert code == 2
    assert line.startswith(f"flowrl: {case.kind} error: "), line
    for words in case.words(ctx):
        assert words in line, (words, line)
    if finished:
        assert sorted(p.name for p in run_dir.iterdir()) == ["summary.json"]  # untouched
    else:
        assert_no_run_folder(run_dir, case.runtime)


def test_server_down_after_retries(tmp_path: Path, capsys, monkeypatch) -> None:
    sleeps: list[float] = []
    monkeypatch.setattr(rhttp, "_sleep", sleeps.append)
    with socket.socket() as probe:  # a port that was free a moment ago: nobody listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    run_dir = tmp_path / "run"
    argv = [*FLOW, rewards("remote", url=url, retries=2, backoff=0.5), f"output.run_dir={run_dir}"]
    code, line = run_cli(argv, capsys)
    assert code == 2 and sleeps == [0.5, 1.0]
    assert line.startswith("flowrl: reward error: reward 'remote': ")
    assert f"POST {url}/score failed: connection error" in line and "gave up after 3 attempts" in line
    assert_no_run_folder(run_dir, runtime=True)


def test_debug_reraises_with_the_original_chained(tmp_path: Path, capsys) -> None:
    argv = ["train", "--debug", *FLOW[1:], rewards("bad_rewards:raises"), f"output.run_dir={tmp_path / 'run'}"]
    with pytest.raises(RewardError, match=r"^reward 'bad_rewards:raises' raised ValueError: detector weights") as info:
        main(argv)
    assert isinstance(info.value.__cause__, ValueError)
    assert "flowrl:" not in capsys.readouterr().err
    with pytest.raises(DataError, match=r"empty\.txt. has no prompts"):
        main(["train", "--debug", *FLOW[1:], f"data.train_prompts={Ctx(tmp_path).file('empty.txt', '')}"])


def test_a_stopped_run_exits_2(tmp_path: Path, capsys, monkeypatch) -> None:
    from flowrl.image.recipe import ImageRecipe

    def stop(self, cfg):
        raise TrainingStopped("3 iterations in a row skipped: non-finite rewards")

    monkeypatch.setattr(ImageRecipe, "setup", stop)
    code, line = run_cli([*FLOW, f"output.run_dir={tmp_path / 'run'}"], capsys)
    assert (code, line) == (2, "flowrl: training error: 3 iterations in a row skipped: non-finite rewards")


def test_bugs_keep_their_traceback(tmp_path: Path, monkeypatch) -> None:
    from flowrl.image.recipe import ImageRecipe

    def bug(self, cfg):
        raise KeyError("a bug, not bad input")

    monkeypatch.setattr(ImageRecipe, "setup", bug)
    with pytest.raises(KeyError, match="a bug"):
        main([*FLOW, f"output.run_dir={tmp_path / 'run'}"])


DEMO = str(ROOT / "configs" / "demo.yaml")
#: every command reports bad input through the same one line (flowrl.cli.main), not a handler of its own
COMMAND_CASES = {
    "gallery --seeds": (["gallery", "--config", DEMO, "--column", "b=base", "--seeds", "0,x"], "config",
                        ["--seeds '0,x' must be comma-separated integers"]),
    "gallery unknown column source": (["gallery", "--config", DEMO, "--column", "b=/no/such/folder"], "config",
                                      ["/no/such/folder"]),
    "bench --lr-grid": (["bench", "--lr-grid", "1e-3,fast"], "config", ["--lr-grid '1e-3,fast'"]),
    "bench missing preset": (["bench", "--preset", "/no/preset.yaml"], "config", ["/no/preset.yaml"]),
    "serve-reward --options": (["serve-reward", "--reward", "jpeg-compressibility", "--options", "[1]"], "config",
                               ["--options: expected a JSON object or key=value, got '[1]'"]),
    "serve-reward unknown option": (["serve-reward", "--reward", "jpeg-compressibility", "--options", "qualty=80"],
                                    "config", ["'jpeg-compressibility'", "qualty"]),
    "serve-reward unknown reward": (["serve-reward", "--reward", "jpeg-compresibility"], "config",
                                    ["jpeg-compresibility"]),
    "eval --seeds": (["eval", "--config", DEMO, "--checkpoint", "b=base", "--seeds", "1,1"], "config",
                     ["--seeds '1,1' must be distinct"]),
}  # fmt: skip


@pytest.mark.parametrize("name", list(COMMAND_CASES))
def test_every_command_reports_bad_input_in_one_line(name: str, capsys) -> None:
    argv, kind, words = COMMAND_CASES[name]
    code, line = run_cli(argv, capsys)
    assert code == 2 and line.startswith(f"flowrl: {kind} error: "), line
    for w in words:
        assert w in line, (w, line)


def test_a_launch_the_trainer_cannot_run_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # FSDP asked for, one process launched
    run_dir = tmp_path / "run"
    code, line = run_cli([*FLOW, f"output.run_dir={run_dir}"], capsys)
    assert (code, line) == (2, "flowrl: launch error: FSDP needs at least 2 processes (accelerate launch "
                               "--num_processes N)")  # fmt: skip
    assert not run_dir.exists()


def test_no_plain_value_error_is_raised_in_the_trainer() -> None:
    """Input errors in the trainer are flowrl.core.errors classes (one line, exit 2); a plain ValueError would reach
    the user as a traceback. Library-level argument checks live in samplers/ and advantages/."""
    import ast

    found = []
    for path in sorted((ROOT / "flowrl" / "trainer").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Raise) and node.exc is not None:
                call = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
                if isinstance(call, ast.Name) and call.id in ("ValueError", "FileExistsError", "TypeError"):
                    found.append(f"{path.name}:{node.lineno}")
    assert not found, found


# --------------------------------------------------------------------------- below the command line


def test_non_finite_scores_pass_and_are_counted() -> None:
    rewards_ = RewardSet.from_specs([{"name": "bad_rewards:nan_scores"}, {"name": "bad_rewards:good"}])
    total, parts = rewards_(torch.rand(4, 3, 8, 8), ["a", "b", "c", "d"])
    assert math.isnan(total[0]) and math.isinf(total[-1]) and torch.isfinite(total[1:3]).all()
    assert rewards_.non_finite(parts) == {"bad_rewards:nan_scores": 2}
    assert rewards_.non_finite({"bad_rewards:good": parts["bad_rewards:good"]}) == {}


def test_user_reward_function_options_and_class() -> None:
    images = torch.rand(2, 3, 4, 4)
    plain = make_reward("bad_rewards:good")(images, ["a", "b"])["score"]
    shifted = make_reward("bad_rewards:good", offset=1.0)(images, ["a", "b"])["score"]
    torch.testing.assert_close(shifted, plain + 1)
    doubled = make_reward("bad_rewards:Brightness", scale=2.0)(images, ["a", "b"])["score"]
    torch.testing.assert_close(doubled, 2 * plain)


def test_long_prompts_are_truncated_with_one_warning(caplog, monkeypatch) -> None:
    from flowrl.core import inputs
    from flowrl.image.models import common
    from flowrl.image.models.toy import TOY_MAX_TOKENS, clip_tokenizer

    monkeypatch.setattr(inputs, "_TRUNCATION_WARNED", set())
    tokenizer = clip_tokenizer(TOY_MAX_TOKENS)
    long = "a small red cube to the left of a large blue sphere under a green cone on a wooden table"
    with caplog.at_level(logging.WARNING, logger="flowrl.models"):
        ids = common.token_ids(tokenizer, ["a red cube", long], torch.device("cpu"))
        common.token_ids(tokenizer, [long], torch.device("cpu"))
    assert ids.shape == (2, TOY_MAX_TOKENS)
    warnings = [r.getMessage() for r in caplog.records if r.name == "flowrl.models"]
    assert len(warnings) == 1, warnings  # once per tokenizer and limit
    assert "prompt 'a small red cube to the left of …' is 22 tokens" in warnings[0]
    assert f"reads at most {TOY_MAX_TOKENS}, so it is truncated" in warnings[0]


def test_long_text_prompts_keep_their_end(caplog, monkeypatch) -> None:
    from flowrl.core import inputs
    from flowrl.text.model import tokenize_prompts
    from flowrl.text.world import build_tokenizer

    monkeypatch.setattr(inputs, "_TRUNCATION_WARNED", set())
    tokenizer = build_tokenizer()
    with caplog.at_level(logging.WARNING, logger="flowrl.models"):
        ids, mask = tokenize_prompts(tokenizer, ["12+34=", "1+2="], torch.device("cpu"), max_length=4)
    assert tokenizer.batch_decode(ids, skip_special_tokens=True) == ["+34=", "1+2="]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 1]]
    assert "'12+34=' is 6 tokens" in caplog.text and "truncated from the left" in caplog.text


def test_gallery_reward_failure_is_one_line_with_exit_code_2(tiny_model, tmp_path, capsys) -> None:
    import yaml

    from flowrl.image.config import to_dict
    from flowrl.recipes import load_config

    cfg = load_config(None, [f"model.path={tiny_model}", "rewards=[{name: 'bad_rewards:raises'}]"])
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(cfg)))
    args = ["gallery", "--config", str(config), "--column", "base=base", "--prompts", "toy:held-out"]
    args += ["--num-prompts", "1", "--seeds", "0", "--out", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == "flowrl: reward error: reward 'bad_rewards:raises' raised ValueError: detector weights missing"
    assert not (tmp_path / "out" / "gallery").exists()
