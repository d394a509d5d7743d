import importlib.util
import inspect
import subprocess
import sys
from pathlib import Path

import flowrl.samplers as samplers

ROOT = Path(__file__).resolve().parents[1]


def test_namespaces_map_to_top_level_folders():
    import flowrl.rewards

    assert Path(samplers.__file__).parent == ROOT / "samplers"
    assert Path(flowrl.rewards.__file__).parent == ROOT / "rewards"
    # the folders are not importable under their bare names
    assert importlib.util.find_spec("samplers") is None or "site-packages" not in str(
        importlib.util.find_spec("samplers").origin
    )


def test_no_bare_top_level_imports():
    offenders = []
    for path in ROOT.glob("**/*.py"):
        if ".venv" in path.parts:
            continue
        for line in path.read_text().splitlines():
            stripped = line.strip()
            if stripped.startswith(("import samplers", "from samplers", "import rewards", "from rewards")):
                offenders.append(f"{path}: {stripped}")
    assert not offenders, offenders


def test_public_sampler_functions_are_typed_and_documented():
    for name in samplers.__all__:
        obj = getattr(samplers, name)
        if inspect.isfunction(obj):
            sig = inspect.signature(obj)
            assert obj.__doc__, f"{name} has no docstring"
            assert sig.return_annotation is not inspect.Signature.empty, f"{name} has no return type"
            missing = [p for p in sig.parameters.values() if p.annotation is inspect.Parameter.empty]
            assert not missing, f"{name}: untyped parameters {missing}"


def test_ruff_is_clean():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
