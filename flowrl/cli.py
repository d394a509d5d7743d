"""Command line: ``flowrl train --config configs/demo.yaml [key=value ...]``; ``flowrl serve-reward --reward NAME``.

Errors in the user's input (``flowrl.core.errors.InputError``: a config value, a prompt or data file, a reward's
output, a reward server's reply, a run that stopped itself) print one line ``flowrl: <kind> error: <message>``
and exit with code 2 (``--debug`` shows the traceback); other exceptions are bugs and keep their traceback.
The last line ``train`` prints is the run folder's path.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from flowrl.core.errors import (
    ConfigError,
    DataError,
    InputError,
    Interrupted,
    LaunchError,
    RewardError,
    TrainingStopped,
)
from flowrl.core.options import seed_indices

#: the word after ``flowrl:`` for each kind of input error (checked in order: subclasses first)
ERROR_KINDS: tuple[tuple[type[InputError], str], ...] = (
    (ConfigError, "config"),
    (LaunchError, "launch"),
    (DataError, "data"),
    (RewardError, "reward"),
    (TrainingStopped, "training"),
    (InputError, "input"),
)


def error_line(error: InputError) -> str:
    """``flowrl: <kind> error: <message>`` on one line (newlines in the message become spaces)."""
    kind = next(word for cls, word in ERROR_KINDS if isinstance(error, cls))
    return f"flowrl: {kind} error: {' '.join(str(error).split())}"


def _help_backend(argv: list[str]) -> str | None:
    """The backend ``flowrl train --config X --help`` describes: X's ``backend`` (or a ``backend=`` override);
    None (both) without a readable config."""
    if "train" not in argv or not {"-h", "--help"} & set(argv):
        return None
    import yaml

    from flowrl.core.presets import yaml_load
    from flowrl.recipes import backend_of

    data: Any = None
    backend = next((a.split("=", 1)[1] for a in argv if a.startswith("backend=")), None)
    for i, arg in enumerate(argv):
        path = argv[i + 1] if arg == "--config" and i + 1 < len(argv) else arg.partition("--config=")[2]
        if path and os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = yaml_load(f)
            except (OSError, UnicodeError, yaml.YAMLError):
                return None
    if backend is None and not isinstance(data, dict):
        return None
    try:
        return backend_of({**(data if isinstance(data, dict) else {}), **({"backend": backend} if backend else {})})
    except ConfigError:
        return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    from flowrl import __version__
    from flowrl.recipes import options_help

    parser = argparse.ArgumentParser(prog="flowrl", description="RL fine-tuning of flow-matching image models.")
    parser.add_argument("--version", action="version", version=f"flowrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train a policy (and evaluate it before and after)",
        description="Train with a YAML preset and key=value overrides, e.g. "
        "`flowrl train --config configs/demo.yaml train.iterations=5`.",
        epilog=options_help(_help_backend(sys.argv[1:] if argv is None else argv)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config", help="YAML preset (default: built-in defaults)")
    train.add_argument("--debug", action="store_true", help="show tracebacks for input errors (config, data, rewards)")
    train.add_argument(
        "--check",
        action="store_true",
        help="validate the config and overrides in this one process and exit (no model loads); the launchers in "
        "scripts/ run it before `accelerate launch`, so that an error is one line, not one per process",
    )
    train.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-4")
    bench = sub.add_parser(
        "bench",
        help="compare methods on the toy world under one training-time budget",
        description="Run a bench preset, e.g. `flowrl bench --preset configs/bench/full.yaml`; writes results.md, "
        "results.json and reward_vs_time.png into --out (default runs/bench-<preset>-<timestamp>).",
    )
    bench.add_argument("--preset", default="configs/bench/full.yaml", help="bench preset YAML")
    bench.add_argument("--methods", help="comma-separated subset of the preset's methods, in this order")
    bench.add_argument("--budget-minutes", type=float, help="training minutes per method (overrides the preset)")
    bench.add_argument("--eval-every-minutes", type=float, help="evaluation interval (overrides the preset)")
    bench.add_argument("--repeats", type=int, help="reported runs per method (overrides the preset)")
    bench.add_argument(
        "--lr-grid",
        help="comma-separated learning rates to choose from on the validation prompts (overrides the preset)",
    )
    bench.add_argument("--out", help="output folder")
    bench.add_argument("--debug", action="store_true", help="show tracebacks for configuration errors")
    gallery = sub.add_parser(
        "gallery",
        help="compare checkpoints or methods side by side on fixed prompts and seeds",
        description="Generate every column on the same prompts and seeds, score them and write <out>/gallery/ "
        "(index.html, images/, contact_sheet.png), e.g. `flowrl gallery --config configs/demo.yaml --column "
        "base=base --column trained=runs/demo-x/checkpoints/final`. A flowrl bench folder as SOURCE gives one "
        "column per method.",
    )
    gallery.add_argument("--config", help="YAML config of the model, sampling and rewards (default: built-in)")
    gallery.add_argument(
        "--column", action="append", required=True, metavar="LABEL=SOURCE[@CONFIG]",
        help="SOURCE: base, a checkpoint folder or a bench folder; @CONFIG overrides --config for this column",
    )  # fmt: skip
    gallery.add_argument("--prompts", help="toy:<split> or a text file, one per line (default: the config's "
                         "data.eval_prompts)")  # fmt: skip
    gallery.add_argument("--num-prompts", type=int, default=12, help="first N prompts (0 = all)")
    gallery.add_argument("--seeds", default="0", help="comma-separated seed indices (own noise per prompt and index)")
    gallery.add_argument("--out", default="gallery-out", help="output folder (the page is <out>/gallery/index.html)")
    gallery.add_argument("--title", default="flowrl gallery")
    gallery.add_argument("--debug", action="store_true", help="show tracebacks for configuration errors")
    from flowrl.image.eval_report import add_arguments as add_eval_arguments

    evaluate = sub.add_parser(
        "eval",
        help="evaluate the base and checkpoints on fixed prompts and seeds (eval.json with SEs and monitors)",
        description="Evaluate columns on the same (prompt, seed index) pairs, e.g. `flowrl eval --config "
        "configs/demo.yaml --checkpoint base=base --checkpoint trained=runs/demo-x/checkpoints/final`; writes "
        "<out>/eval.json: means with prompt-clustered SEs, per-category results, diversity, drift from the base and "
        "reward-hacking warnings.",
    )
    add_eval_arguments(evaluate)
    prof = sub.add_parser(
        "profile",
        help="time each stage of a training iteration (flow configs)",
        description="Profile training iterations of a config, e.g. `flowrl profile --config configs/demo.yaml`: "
        "seconds per stage, NFE and achieved GFLOP/s; with --out, writes profile.json and profile.md there.",
    )
    prof.add_argument("--config", help="YAML preset (default: built-in defaults)")
    prof.add_argument("--iterations", type=int, default=3, help="measured iterations")
    prof.add_argument("--warmup", type=int, default=1, help="iterations run first and not measured")
    prof.add_argument("--out", help="folder for profile.json and profile.md")
    prof.add_argument("--debug", action="store_true", help="show tracebacks for input errors")
    prof.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. train.lr=1e-4")
    from flowrl.serve import add_arguments as add_serve_arguments

    serve = sub.add_parser(
        "serve-reward",
        help="serve a reward model over HTTP for the `remote` reward",
        description="Serve one reward (POST /score, GET /health) on 127.0.0.1 by default, e.g. "
        "`flowrl serve-reward --reward jpeg-compressibility --options quality=80 --port 8000`.",
    )
    add_serve_arguments(serve)
    return parser


def quiet_libraries() -> None:
    """Keep library start-up noise off the console: the model-loading progress bars of transformers, diffusers
    and the hub, and DeepSpeed's line about not finding a GPU (on a machine without one it is told the CPU).
    ``FLOWRL_VERBOSE=1`` keeps them all."""
    if os.environ.get("FLOWRL_VERBOSE"):
        return
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every command reports an error in the user's input the same way: one line naming the key
    or file, exit 2 (``--debug`` re-raises it)."""
    args = build_parser(argv).parse_args(argv)
    if args.command != "serve-reward":
        quiet_libraries()
    commands = {"serve-reward": _serve, "bench": _bench, "gallery": _gallery, "profile": _profile, "eval": _eval,
                "train": _train}  # fmt: skip
    try:
        return commands[args.command](args)
    except InputError as e:
        if getattr(args, "debug", False):
            raise
        print(error_line(e), file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt, RuntimeError) as e:
        # Ctrl-C or SIGTERM: where it stopped and how to go on. One that lands inside a lazy import reaches here
        # wrapped by the library (diffusers: "Failed to import ..."), so the cause chain is searched.
        stop = _interruption(e)
        if stop is None:
            raise
        print(f"flowrl: {stop if isinstance(stop, Interrupted) else 'interrupted'}", file=sys.stderr)
        return stop.code if isinstance(stop, Interrupted) else 130


def _serve(args: argparse.Namespace) -> int:
    from flowrl.serve import run

    return run(args)


def _profile(args: argparse.Namespace) -> int:
    """``flowrl profile``: print the stage table of a config's training iterations."""
    from flowrl.recipes import load_config, recipe_for

    cfg = load_config(args.config, args.overrides)
    if args.iterations < 1 or args.warmup < 0:
        raise ConfigError("--iterations must be >= 1 and --warmup >= 0")
    from flowrl.image import profile

    report = recipe_for(cfg).profile(cfg, args.iterations, args.warmup)
    print(profile.table(report))
    if args.out:
        profile.write(report, args.out)
    return 0


def _eval(args: argparse.Namespace) -> int:
    """``flowrl eval``: the config's recipe evaluates the columns and writes eval.json; a summary and its path."""
    from flowrl.image import eval_report
    from flowrl.recipes import column_loader, load_config, recipe_for

    cfg = load_config(args.config)
    report = recipe_for(cfg).eval_command(args, cfg, column_loader(cfg))
    for line in eval_report.console_lines(report):
        print(line)
    print(os.path.abspath(os.path.join(args.out, "eval.json")))
    return 0


def _interruption(error: BaseException) -> BaseException | None:
    """The ``Interrupted`` or ``KeyboardInterrupt`` that ``error`` is or was caused by, else None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (Interrupted, KeyboardInterrupt)):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _terminate(signum: int, frame: object) -> None:
    """SIGTERM outside the training loop (loading, evaluating): stop like Ctrl-C, so that a run folder without a
    checkpoint is removed. Inside the loop a SIGTERM saves a checkpoint first (``flowrl.core.loop``)."""
    raise Interrupted("terminated (SIGTERM) before training or after it; nothing more was saved", 143)


def _interrupt(signum: int, frame: object) -> None:
    """Ctrl-C as an ``Interrupted`` rather than a ``KeyboardInterrupt``: Python exits by re-raising SIGINT when a
    KeyboardInterrupt passed through module code (a lazy import), whatever caught it later."""
    raise Interrupted("interrupted", 130)


def _train(args: argparse.Namespace) -> int:
    """``flowrl train``: load and check the config, train, print the run folder; input errors propagate. Ctrl-C
    and SIGTERM stop it with one line (``_interrupt``, ``_terminate``; the loop saves on SIGTERM)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
        return _train_run(args)
    previous = signal.signal(signal.SIGTERM, _terminate), signal.signal(signal.SIGINT, _interrupt)
    try:
        return _train_run(args)
    finally:  # a caller that runs main() in-process keeps its own handlers
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def _train_run(args: argparse.Namespace) -> int:
    """Load and check the config, train, print the evaluation summary and the run folder."""
    from flowrl.recipes import load_config, train

    cfg = load_config(args.config, args.overrides)
    run_dir = cfg.output.run_dir
    if run_dir and os.path.exists(os.path.join(run_dir, "summary.json")):
        raise ConfigError(f"output.run_dir {run_dir!r} already holds a finished run; choose another folder")
    if args.check:
        print(f"flowrl: config ok: {args.config or 'the defaults'}{' with overrides' * bool(args.overrides)}")
        return 0
    name = os.path.splitext(os.path.basename(args.config))[0] if args.config else "run"
    run_dir = train(cfg, name)
    from accelerate import PartialState

    if PartialState().is_main_process:  # under accelerate launch every process returns here
        from flowrl.core.loop import summary_lines

        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as f:
            print("\n".join(summary_lines(json.load(f))))
        print(run_dir)
    return 0


def _gallery(args: argparse.Namespace) -> int:
    """``flowrl gallery``: every column on the same prompts and seeds, scored, as a browsable page."""
    from flowrl.core.columns import parse_columns
    from flowrl.image.compare import render
    from flowrl.image.data import inputs_by_prompt, load_prompt_set
    from flowrl.recipes import column_loader, load_config, renders_images

    cfg = load_config(args.config)
    if not renders_images(cfg):
        raise ConfigError(
            f"--config {args.config!r}: flowrl gallery shows images; evaluate this config with flowrl eval"
        )
    specs = parse_columns(args.column, args.config, "--column", column_loader(cfg))
    source = args.prompts or cfg.data.eval_prompts
    prompt_set = load_prompt_set(source)
    prompts = prompt_set.prompts[: args.num_prompts] if args.num_prompts else prompt_set.prompts
    seeds = seed_indices(args.seeds, 1)
    paths = render(specs, prompts, seeds, args.out, title=args.title, inputs=inputs_by_prompt((source, prompt_set)))
    print(paths["html"])
    return 0


def _bench(args: argparse.Namespace) -> int:
    import time

    from flowrl.image.bench import load_preset, run_bench

    try:
        grid = [float(x) for x in args.lr_grid.split(",")] if args.lr_grid else None
    except ValueError:
        raise ConfigError(f"--lr-grid {args.lr_grid!r} must be comma-separated numbers") from None
    name = os.path.splitext(os.path.basename(args.preset))[0]
    out = args.out or os.path.join("runs", f"bench-{name}-{time.strftime('%Y%m%d-%H%M%S')}")
    preset = load_preset(
        args.preset,
        methods=[m.strip() for m in args.methods.split(",")] if args.methods else None,
        budget_minutes=args.budget_minutes,
        eval_every_minutes=args.eval_every_minutes,
        repeats=args.repeats,
        lr_grid=grid,
    )
    run_bench(preset, out, log=lambda line: print(line, flush=True))
    print(os.path.abspath(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
