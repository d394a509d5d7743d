"""Every shell command in README.md and docs/*.md is run or checked, so that a documented command the code refuses
fails here (issue 30.4).

The fenced ``bash`` blocks are read as a shell would (continuation lines joined, comments dropped, ``VAR=value``
prefixes kept as the environment) and each command gets one plan (``plan``); a command no plan covers fails
``test_every_documented_command_has_a_plan``, so a new one in the docs needs a decision here.

- run: ``flowrl train``, ``eval`` and ``gallery`` on the shipped toy configs (the toy image world, the toy LM) and
  ``make demo`` (its Makefile recipe) run in this process through ``flowrl.cli.main``, in a scratch folder, shortened
  by overrides: one iteration of 2 prompts (× 2 samples unless the command sets ``train.group_size``), no
  before/after evaluation, a run folder of its own (two runs in one second would share ``runs/<name>-<time>``);
  ``eval`` and ``gallery`` on 2 prompts and seed 0. Folders the docs show from earlier runs (``runs/demo-x``,
  ``runs/text_demo-x``) are the folders of the documented runs made here; a bench folder and TRL's output folder
  are stand-ins built from them (the bench folder's layout with the demo's checkpoint as its one method; the text
  run's LoRA, a peft adapter as TRL writes with a ``peft_config``).
- check: commands on real models (weights under ``/models``, hub ids, prompt files under ``data/``) are validated
  as far as a machine without them allows: ``flowrl train --check`` with the weights and prompt files replaced by
  stand-ins (an empty folder, a two-prompt file); the launchers in ``scripts/`` run with stub ``accelerate`` and
  ``python`` that record what they were given, and the recorded check runs here; ``accelerate launch`` and
  ``torchrun`` lines check their ``-m flowrl train`` part; ``flowrl bench`` parses its arguments and loads the
  preset, which validates every method's config, without training (the full bench is about 5 hours).
- the reward-server example (docs/rewards.md) runs as written: the server on a free port in a thread, the
  ``python -c`` line, and the ``curl`` line through bash when curl is installed.
- skip (``SKIPS``, each with its reason): the test suite itself, a hub download, vLLM servers, the TRL speed
  benchmark, a reward server that needs real weights.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from flowrl import cli

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?P<lang>[\w-]*)\n(?P<body>.*?)^```", re.S | re.M)
SHELL = {"bash", "sh", "shell", "console"}
ENV = re.compile(r"^[A-Z_][A-Z0-9_]*=")


@dataclass(frozen=True)
class Command:
    """One documented command: where it is, its ``VAR=value`` prefixes, its words, and its line as written."""

    where: str
    env: tuple[tuple[str, str], ...]
    argv: tuple[str, ...]
    line: str = field(compare=False)

    def __str__(self) -> str:
        return f"{self.where}: {self.line}"


def documented_commands() -> list[Command]:
    """Every command of every shell block in README.md and docs/*.md, in document order."""
    commands = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            if block["lang"] not in SHELL:
                continue
            first = text[: block.start("body")].count("\n") + 1
            lines, start, joined = block["body"].splitlines(), None, ""
            for i, line in enumerate(lines):
                start = first + i if start is None else start
                joined += line[:-1] + " " if line.endswith("\\") else line
                if line.endswith("\\"):
                    continue
                words = shlex.split(joined, comments=True)
                words = words[:-1] if words[-1:] == ["&"] else words
                if words:
                    env = tuple(tuple(w.split("=", 1)) for w in words if ENV.match(w))
                    where = f"{doc.relative_to(REPO)}:{start}"
                    commands.append(Command(where, env, tuple(words[len(env) :]), joined.split(" #")[0].strip()))
                start, joined = None, ""
    return commands


COMMANDS = documented_commands()

#: commands neither run nor checked, and why
SKIPS: list[tuple[Callable[[Command], bool], str]] = [
    (lambda c: c.argv[:2] == ("make", "test"), "the test suite itself (this test is part of it)"),
    (lambda c: "DiffusionPipeline.download" in c.line, "downloads SD3.5 Medium from the hub (no network here)"),
    (lambda c: c.argv[:2] == ("vllm", "serve"), "starts a VLM judge on GPUs (vLLM is not a flowrl dependency)"),
    (
        lambda c: c.argv[:2] == ("python", "scripts/bench_text_trl.py"),
        "the timed text-vs-TRL benchmark (minutes per line); tests/test_trl_parity.py checks what it compares",
    ),
    (
        lambda c: c.argv[:4] == ("flowrl", "serve-reward", "--reward", "hpsv2"),
        "serves HPSv2.1 from its checkpoint under /models (not here); the jpeg reward server example runs",
    ),
]
SERVER_EXAMPLE = "docs/rewards.md"  # the block that starts a reward server, makes an image and scores it with curl


def option_of(words: Sequence[str], flag: str) -> str | None:
    """The value after ``flag`` in ``words`` (None without it)."""
    return dict(itertools.pairwise(words)).get(flag)


def toy_config(argv: tuple[str, ...]) -> bool:
    """Whether the command's ``--config`` is a shipped config of a toy model (``assets/``), which runs here."""
    path = option_of(argv, "--config")
    if path is None:
        return False
    model = (yaml.safe_load((REPO / path).read_text(encoding="utf-8")) or {}).get("model", {})
    return str(model.get("path", "")).startswith("assets/")


def plan(c: Command) -> tuple[str, str]:
    """(what this test does with ``c``, why): run, check, server, or skip."""
    for matches, why in SKIPS:
        if matches(c):
            return "skip", why
    words = c.argv
    if words[:2] == ("make", "demo"):
        return "run", "its Makefile recipe, shortened"
    if words[:1] == ("flowrl",) and words[1:2] in (("train",), ("eval",), ("gallery",)) and toy_config(words):
        return "run", "shortened"
    if words[:1] == ("flowrl",) and words[1:2] == ("train",):
        return "check", "a real model: flowrl train --check with stand-ins for weights and prompt files"
    if words[:1] == ("flowrl",) and words[1:2] in (("eval",), ("gallery",)):
        return "check", "a real model and its checkpoint: the config is validated with stand-ins"
    if words[:2] == ("flowrl", "bench"):
        return "check", "the preset and every method's config load; the bench itself trains for hours"
    if words[0].startswith("scripts/") and words[0].endswith(".sh"):
        return "check", "the launcher runs with stub accelerate and python; its config check runs here"
    if words[:2] == ("accelerate", "launch") or words[:1] == ("torchrun",):
        return "check", (
            "a multi-process launch: its -m flowrl train part is checked; tests/test_distributed.py trains DDP, FSDP "
            "and DeepSpeed ZeRO-2 in two CPU processes"
        )
    if c.where.startswith(SERVER_EXAMPLE) and words[0] in ("flowrl", "python", "curl"):
        return "server", "the reward server example, as written"
    return "", ""


def test_every_documented_command_has_a_plan():
    assert len(COMMANDS) > 40  # the extraction found the blocks
    missing = [str(c) for c in COMMANDS if not plan(c)[0]]
    assert not missing, "documented commands this test neither runs nor checks:\n" + "\n".join(missing)
    for matches, why in SKIPS:  # no stale entry
        assert any(matches(c) for c in COMMANDS), why
    assert [c.argv[:3] for c in COMMANDS if c.where.startswith("README.md")][:3] == [
        ("make", "demo"), ("make", "test"), ("scripts/train_sd35_pickscore.sh", "model.path=/models/sd3.5-medium")
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------------- running


def makefile_recipe(target: str) -> list[str]:
    """The words of a Makefile target's one-line recipe, ``$(VENV)/bin/flowrl`` read as ``flowrl``."""
    text = (REPO / "Makefile").read_text(encoding="utf-8")
    recipe = re.search(rf"^{re.escape(target)}:.*\n\t(.+)$", text, re.M)
    assert recipe, target
    return shlex.split(recipe[1].replace("$(VENV)/bin/flowrl", "flowrl"))


def call(argv: list[str]) -> tuple[int, str, str]:
    """``flowrl <argv>`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(argv)
    if "accelerate.state" in sys.modules:  # each command launches its own accelerate state, as a new process would
        sys.modules["accelerate.state"].AcceleratorState._reset_state()
    return code, out.getvalue(), err.getvalue()


def with_option(argv: list[str], flag: str, value: str) -> list[str]:
    """``argv`` with ``flag``'s value set to ``value`` (``--flag v`` or ``--flag=v`` replaced, else appended)."""
    out, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word == flag:
            skip = True
        elif not word.startswith(flag + "="):
            out.append(word)
    return [*out, flag, value]


def shortened(argv: list[str], index: int) -> list[str]:
    """A documented ``flowrl train|eval|gallery`` made small (the module docstring says how)."""
    if argv[0] == "train":
        config = Path(option_of(argv, "--config")).stem
        extra = ["train.iterations=1", "train.prompts_per_step=1", "eval.enabled=false"]
        extra += [] if any(a.startswith("train.group_size=") for a in argv) else ["train.group_size=2"]
        extra += (
            [] if any(a.startswith("output.run_dir=") for a in argv) else [f"output.run_dir=runs/{config}-{index}"]
        )
        return [*argv, *extra]
    return with_option(with_option(argv, "--num-prompts", "2"), "--seeds", "0")


class Workspace:
    """A scratch folder standing in for a user's checkout (``configs/`` linked in) where the runs happen, and the
    folders the docs' later commands name."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "configs").symlink_to(REPO / "configs")
        self.folders: dict[str, str] = {}  # a folder named in the docs -> the one made here

    def substitute(self, argv: list[str]) -> list[str]:
        out = []
        for word in argv:
            for name, path in self.folders.items():
                word = word.replace(name, path)
            out.append(word)
        return out


def the_runs() -> list[Command]:
    """The commands to run, trainings first (later commands evaluate what they made), in document order."""
    runs = [c for c in COMMANDS if plan(c)[0] == "run"]
    return sorted(runs, key=lambda c: c.argv[:2] not in (("flowrl", "train"), ("make", "demo")))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The toy models' matrices are small: one thread runs them faster than two, and a shared machine's load does
    not turn two threads' waits into minutes."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.usefixtures("one_thread")
def test_documented_commands_run(tmp_path: Path, monkeypatch):
    """Each documented toy command runs to exit 0 (shortened); the demo's, the text demo's and the toy hacking
    run's folders serve the evaluations and galleries that follow them in the docs. A command that is the same as
    an earlier one once the docs' folders are resolved (``make demo`` in two pages, the demo's evaluation in two)
    runs once."""
    monkeypatch.chdir(tmp_path)
    space = Workspace(tmp_path)
    failures, done = [], []
    for index, c in enumerate(the_runs()):
        argv = space.substitute((makefile_recipe("demo") if c.argv[:2] == ("make", "demo") else list(c.argv))[1:])
        parsed = vars(cli.build_parser(argv).parse_args(shortened(argv, 0)))
        if parsed in done:
            continue
        done.append(parsed)
        code, out, err = call(shortened(argv, index))
        if code != 0:
            last = (err.strip() or out.strip() or "(no output)").splitlines()[-1]
            failures.append(f"{c}\n    exit {code}: {last}")
        elif argv[0] == "train":
            run = out.strip().splitlines()[-1]  # the command's last line is its run folder
            assert (Path(run) / "checkpoints" / "final").is_dir(), run
            remember_run(space, c, argv, run)
        else:  # eval: the scores and eval.json's path; gallery: the page's path
            assert Path(out.strip().splitlines()[-1]).is_file(), out
    assert not failures, "documented commands that failed:\n" + "\n".join(failures)


def remember_run(space: Workspace, c: Command, argv: list[str], run: str) -> None:
    """Map the folders the docs name after this run (the demo's, the text demo's) to ``run``, the first time."""
    config = Path(option_of(argv, "--config")).stem
    if c.argv[:2] == ("make", "demo") and "runs/demo-x" not in space.folders:
        for name in ("runs/demo-x", "runs/demo-20261123-120000"):
            space.folders[name] = run
        bench = space.root / "bench-stand-in"  # a bench output: results.json and <method>/checkpoints/final
        (bench / "flow-grpo-fast" / "checkpoints").mkdir(parents=True)
        (bench / "flow-grpo-fast" / "checkpoints" / "final").symlink_to(Path(run) / "checkpoints" / "final")
        (bench / "results.json").write_text(json.dumps({"stand_in_for": "a finished bench"}), encoding="utf-8")
        space.folders["runs/bench-full-20261123-161400"] = str(bench)
    elif config == "text_demo" and "runs/text_demo-x" not in space.folders:
        space.folders["runs/text_demo-x"] = run
        space.folders["trl-out/checkpoint-500"] = os.path.join(run, "checkpoints", "final", "lora")


# ------------------------------------------------------------------------------------------------- checking


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, str]:
    """An empty folder for weights and checkpoints a user downloads or trains, and a small file of prompt rows with
    a reference image each (what editing configs read; the others take the prompts)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("stand-ins")
    (root / "weights").mkdir()
    Image.new("RGB", (32, 32)).save(root / "ref.png")
    rows = [
        '{"prompt": "a red cube", "image": "ref.png", "target": "a red square", "edit": "add"}',
        '{"prompt": "a cat on a sofa", "image": "ref.png", "target": "a red square", "edit": "add"}',
    ]
    (root / "prompts.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    pair = '{"prompt": "a red cube", "chosen": "ref.png", "rejected": "ref.png"}'
    (root / "pairs.jsonl").write_text(pair + "\n", encoding="utf-8")
    files = {"weights": "weights", "prompts": "prompts.jsonl", "pairs": "pairs.jsonl"}
    return {key: str(root / name) for key, name in files.items()}


def replace_weights(argv: tuple[str, ...] | list[str], stand_ins: dict[str, str]) -> list[str]:
    """Paths under /models and /ckpts (what a user downloads or trains) replaced by the stand-in folder, and a pair
    dataset under /data by the stand-in pair file."""
    words = [re.sub(r"/(models|ckpts)/[^\s,]*", stand_ins["weights"], word) for word in argv]
    return [re.sub(r"^data\.pairs=/data/\S*", f"data.pairs={stand_ins['pairs']}", word) for word in words]


def prompt_files(config: str, stand_ins: dict[str, str]) -> list[str]:
    """Overrides pointing the config's prompt files that are not here (``data/...``) at the stand-in file."""
    data = (yaml.safe_load((REPO / config).read_text(encoding="utf-8")) or {}).get("data", {})
    keys = ("train_prompts", "eval_prompts")
    return [f"data.{k}={stand_ins['prompts']}" for k in keys if k in data and not (REPO / data[k]).exists()]


def checked_train(argv: list[str], stand_ins: dict[str, str]) -> tuple[int, str]:
    """``flowrl train --check`` of a train command's arguments (after ``train``), with the stand-ins."""
    config = option_of(argv, "--config")
    code, out, err = call(["train", "--check", *replace_weights(argv, stand_ins), *prompt_files(config, stand_ins)])
    return code, (err or out).strip()


def flowrl_part(words: tuple[str, ...]) -> list[str]:
    """The ``flowrl`` arguments of an ``accelerate launch ... -m flowrl ...`` or ``torchrun ... -m flowrl ...``."""
    i = words.index("-m")
    assert words[i + 1] == "flowrl", words
    return list(words[i + 2 :])


def launcher_check(c: Command, tmp_path: Path, stand_ins: dict[str, str]) -> list[str]:
    """Run a documented launcher line with stub ``accelerate`` and ``python``: the arguments of its config check
    (after ``-m flowrl train --check``), which must be those it launches."""
    checked, launched = tmp_path / "checked", tmp_path / "launched"
    python = tmp_path / "python"
    python.write_text(
        "#!/usr/bin/env bash\n"
        f'if [[ "$1 $2 $3 $4" == "-m flowrl train --check" ]]; then printf "%s\\0" "$@" > "{checked}"; exit 0; fi\n'
        f'exec {sys.executable} "$@"\n'
    )
    accelerate = tmp_path / "accelerate"
    accelerate.write_text(f'#!/usr/bin/env bash\nprintf "%s\\0" "$@" > "{launched}"\n')
    python.chmod(0o755), accelerate.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("NUM_GPUS", "ACCELERATE_CONFIG", "FSDP_LAYERS")}
    env.update({**dict(c.env), "ACCELERATE": str(accelerate), "PYTHON": str(python)})
    env["JUDGE_URL"] = "http://127.0.0.1:9/v1"  # nothing answers: the launcher warns and goes on
    script, *args = replace_weights(c.argv, stand_ins)
    subprocess.run(["bash", str(REPO / script), *args], env=env, check=True, capture_output=True, timeout=120)
    check = checked.read_bytes().decode().split("\0")[:-1]
    launch = launched.read_bytes().decode().split("\0")[:-1]
    assert launch[launch.index("-m") + 3 :] == check[4:], "the launcher launches what it checked"
    if "NUM_GPUS" in dict(c.env):
        assert launch[launch.index("--num_processes") + 1] == dict(c.env)["NUM_GPUS"]
    return check[4:]


CHECKS = [c for c in COMMANDS if plan(c)[0] == "check"]


@pytest.mark.parametrize("c", CHECKS, ids=[c.where for c in CHECKS])
def test_documented_command_validates(c: Command, stand_ins: dict[str, str], tmp_path: Path, monkeypatch):
    words = c.argv
    if words[:2] == ("flowrl", "bench"):
        import flowrl.image.bench

        ran = []
        monkeypatch.setattr(flowrl.image.bench, "run_bench", lambda preset, out, log: ran.append(preset))
        code, _, err = call(list(words[1:]))
        assert code == 0 and len(ran) == 1, f"{c}\n{err.strip()}"
        preset = yaml.safe_load((REPO / option_of(words, "--preset")).read_text(encoding="utf-8"))
        methods = option_of(words, "--methods")
        expected = methods.split(",") if methods else [m["name"] for m in preset["methods"]]
        assert [m.name for m in ran[0].methods] == expected
        return
    if words[:1] == ("flowrl",) and words[1] in ("eval", "gallery"):
        from flowrl.recipes import load_config

        config = option_of(words, "--config")
        load_config(str(REPO / config), [f"model.path={stand_ins['weights']}", *prompt_files(config, stand_ins)])
        for column in (w for w in words if "=" in w and not w.startswith("-")):  # base, or a path under /ckpts
            assert column.endswith("=base") or "=/ckpts/" in column, column
        return
    if words[0].startswith("scripts/"):
        argv = launcher_check(c, tmp_path, stand_ins)
        code, out, err = call(["train", "--check", *argv, *prompt_files(option_of(argv, "--config"), stand_ins)])
        assert code == 0, f"{c}\n{(err or out).strip()}"
        return
    if words[:2] == ("accelerate", "launch"):
        config_file = option_of(words, "--config_file")
        assert (REPO / config_file).is_file(), config_file
    argv = flowrl_part(words) if words[0] in ("accelerate", "torchrun") else list(words[1:])
    assert argv[0] == "train", c
    code, message = checked_train(argv[1:], stand_ins)
    assert code == 0, f"{c}\n{message}"
    assert message.startswith("flowrl: config ok")


# ------------------------------------------------------------------------------------------------- the server


def test_the_reward_server_example(tmp_path: Path, monkeypatch):
    """docs/rewards.md's example as written: serve the jpeg reward, make the red square, score it with curl (the
    server on a free port instead of 8000); the reply has the documented keys and the documented values."""
    import flowrl.serve

    block = [c for c in COMMANDS if plan(c)[0] == "server"]
    assert [c.argv[0] for c in block] == ["flowrl", "python", "curl"]
    monkeypatch.chdir(tmp_path)
    servers = []
    make = flowrl.serve.make_server
    monkeypatch.setattr(flowrl.serve, "make_server", lambda *a, **k: servers.append(make(*a, **k)) or servers[-1])
    serve = with_option(list(block[0].argv[1:]), "--port", "0")
    thread = threading.Thread(target=call, args=(serve,), daemon=True)
    thread.start()
    try:
        while not servers and thread.is_alive():
            thread.join(0.05)
        assert servers, "the server did not start"
        assert block[1].argv[:2] == ("python", "-c")
        exec(block[1].argv[2], {})  # the doc's image, red.png
        port = servers[0].server_address[1]
        if shutil.which("curl"):
            line = block[2].line.replace("127.0.0.1:8000", f"127.0.0.1:{port}")
            reply = json.loads(subprocess.run(["bash", "-c", line], capture_output=True, text=True, check=True).stdout)
        else:  # the same request without curl
            import base64
            import urllib.request

            image = base64.b64encode(Path("red.png").read_bytes()).decode()
            body = {"prompts": ["a red square"], "images": {"format": "png", "data": [image]}}
            request = urllib.request.Request(f"http://127.0.0.1:{port}/score", json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})  # fmt: skip
            reply = json.loads(urllib.request.urlopen(request, timeout=60).read())
    finally:
        for server in servers:
            server.shutdown()
        thread.join(10)
    documented = json.loads(re.search(r"# (\{.*\})", (REPO / SERVER_EXAMPLE).read_text())[1])
    assert set(reply["outputs"]) == set(documented["outputs"])
    for key, values in documented["outputs"].items():
        assert reply["outputs"][key] == pytest.approx(values, abs=5e-4), key
