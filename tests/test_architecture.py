"""Rules of the code's shape that live in CI rather than in review."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the code that runs methods: it asks a method's registered facts, never its name
RECIPES = [*sorted((REPO / "flowrl" / "image").glob("*.py")), *sorted((REPO / "flowrl" / "text").glob("*.py")),
           *sorted((REPO / "flowrl" / "core").glob("*.py"))]  # fmt: skip
METHOD_KEYS = {("loss", "name"), ("advantage", "name"), ("sampler", "mode")}


def _method_key(node: ast.AST) -> tuple[str, str] | None:
    """``("loss", "name")`` for an expression like ``cfg.loss.name`` or ``run.cfg.loss.name``."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute):
        key = (node.value.attr, node.attr)
        return key if key in METHOD_KEYS else None
    return None


def _is_literal(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return True
    return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and all(_is_literal(e) for e in node.elts)


def test_recipes_never_compare_a_method_name():
    found = []
    for path in RECIPES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(_method_key(s) for s in sides) and any(_is_literal(s) for s in sides):
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "compare registered facts, not names:\n" + "\n".join(found)


def test_the_rule_catches_a_name_comparison():
    tree = ast.parse("if cfg.advantage.name == 'tree' or run.cfg.sampler.mode in ('singular',): pass")
    hits = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Compare) and _method_key(n.left) and _is_literal(n.comparators[0])
    ]
    assert len(hits) == 2


# --------------------------------------------------------------------------- the import graph

PACKAGES = {"flowrl": REPO / "flowrl", "flowrl.samplers": REPO / "samplers", "flowrl.rewards": REPO / "rewards"}


def _modules() -> dict[str, Path]:
    """Every module of the installed ``flowrl`` namespace, by dotted name."""
    out = {}
    for pkg, base in PACKAGES.items():
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            out[".".join([pkg, *parts])] = path
    return out


def _imports(tree: ast.Module, typing_too: bool) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run, at module level or inside functions (lazy); ``if TYPE_CHECKING:`` blocks too when
    ``typing_too`` (a type-only import is still a dependency of the module's meaning)."""
    skip = set()
    for node in ast.walk(tree):
        if not typing_too and isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for child in node.body for n in ast.walk(child)}
    return [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) and id(n) not in skip]


def import_graph(typing_too: bool = True) -> dict[str, set[str]]:
    """Module → the flowrl modules it imports (a package import counts as its ``__init__``), lazy and type-only
    imports included unless ``typing_too`` is false."""
    modules = _modules()

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        deps = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8")), typing_too):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    here = name if path.name == "__init__.py" else name.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        here = here.rpartition(".")[0]
                    base = f"{here}.{base}" if base else here
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            deps |= {m for t in targets if t.startswith("flowrl") and (m := owner(t)) and m != name}
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                found.append(sorted([v, *component]))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_lazy_and_type_only_imports_included():
    graph = import_graph()
    assert len(graph) > 60 and "flowrl.image.trainer" in graph["flowrl.image.run"]
    assert _cycles(graph) == []
    # the check bites: a lazy import back from config to a module that imports it would close a cycle
    assert _cycles({**graph, "flowrl.image.config": graph["flowrl.image.config"] | {"flowrl.recipes"}}) != []
    # type-only imports count too (resume types its recipe argument, under TYPE_CHECKING only)
    assert "flowrl.core.recipe" in graph["flowrl.core.resume"]
    assert "flowrl.core.recipe" not in import_graph(typing_too=False)["flowrl.core.resume"]


TRAINER_MODULES = {"trainer", "run", "recipe", "objectives", "update", "loop", "resume"}


def test_configs_do_not_import_the_trainers():
    graph = import_graph()
    configs = ("flowrl.image.config", "flowrl.text.config", "flowrl.core.sections", "flowrl.core.options")
    for name in (*configs, "flowrl.image.data"):
        trainers = sorted(d for d in graph[name] if d.rpartition(".")[2] in TRAINER_MODULES)
        assert not trainers, f"{name} imports {trainers}"


def test_recipe_files_fit_in_one_sitting():
    long = {
        str(p.relative_to(REPO)): n
        for p in (REPO / "flowrl").rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert not long, f"recipe files over 600 lines: {long}"


def test_no_function_over_100_lines():
    long = []
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 100:
                long.append(
                    f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1})"
                )
    assert not long, "functions over 100 lines: " + ", ".join(long)


def _layer(module: str) -> str:
    """``core``, ``image`` or ``text`` for a module of those folders; the samplers are the image recipe's."""
    if module.startswith("flowrl.samplers"):
        return "image"
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in ("core", "image", "text") else ""


def test_the_layers_import_only_downwards():
    """The core imports neither recipe; the image and text recipes never import each other; the rewards
    (shared by both) import no recipe's trainer."""
    allowed = {"core": {"core"}, "image": {"core", "image"}, "text": {"core", "text"}}
    bad = []
    for name, deps in import_graph().items():
        layer = _layer(name)
        for dep in deps:
            if layer in allowed and _layer(dep) and _layer(dep) not in allowed[layer]:
                bad.append(f"{name} -> {dep}")
    assert not bad, "imports across layers:\n" + "\n".join(sorted(bad))


def test_the_text_recipe_imports_nothing_of_the_flow_recipe():
    graph = import_graph()
    seen, todo = set(), ["flowrl.text.run"]
    while todo:
        for dep in graph[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    assert "flowrl.text.trainer" in seen and "flowrl.core.loop" in seen
    flow = sorted(seen & {"flowrl.image.trainer", "flowrl.image.run", "flowrl.image.objectives"})
    assert not flow, f"the text recipe reaches {flow}"


# --------------------------------------------------------------------------- one place knows the backends

CONFIG_CLASSES = {"Config", "TextConfig"}


def _backend_branches(tree: ast.AST) -> list[ast.AST]:
    """``isinstance(x, Config | TextConfig)``, ``x.backend == "..."`` and ``data.get("backend")``: a module asking
    which backend it holds."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "isinstance":
            kinds = node.args[1] if len(node.args) > 1 else None
            names = {n.id for n in ast.walk(kinds) if isinstance(n, ast.Name)} if kinds is not None else set()
            if names & CONFIG_CLASSES:
                found.append(node)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(isinstance(s, ast.Attribute) and s.attr == "backend" for s in sides) and any(
                _is_literal(s) for s in sides
            ):
                found.append(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            if node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value == "backend":
                found.append(node)
    return found


def test_only_the_recipe_registry_branches_on_the_backend():
    allowed = {"flowrl.recipes"}  # maps a config or a YAML mapping to its recipe
    found = []
    for name, path in _modules().items():
        if name in allowed:
            continue
        for node in _backend_branches(ast.parse(path.read_text(encoding="utf-8"))):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "dispatch through flowrl.recipes, not on the backend:\n" + "\n".join(found)


def test_the_backend_rule_catches_each_idiom():
    code = "isinstance(cfg, TextConfig)\nif cfg.backend == 'text': pass\nb = data.get('backend', 'flow')\n"
    assert len(_backend_branches(ast.parse(code))) == 3
    assert _backend_branches(ast.parse("isinstance(x, dict)\nrun.backend.step()\n")) == []


def test_one_update_loop_makes_every_backward_and_optimizer_step():
    """Both recipes train through ``flowrl.core.update``: no other module calls the parallel layer's backward or
    optimizer step (the two loops that drifted apart are one)."""
    found = []
    for name, path in _modules().items():
        if name in ("flowrl.core.update", "flowrl.core.parallel"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and node.attr in ("backward", "step"):
                owner = node.value
                if isinstance(owner, ast.Attribute) and owner.attr == "parallel":
                    found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, found


# --------------------------------------------------------------------------- facts are typed, never strings


def _enum_facts() -> set[str]:
    """The facts whose values are enums (``flowrl.core.registry.Fact``), and the helpers that return them
    (``trains_on(name)``, ``normalizes_by(name)``): what the code must compare by identity, never with a string."""
    import dataclasses
    import typing

    from flowrl.core.advantages import ADVANTAGES
    from flowrl.core.losses import LOSSES
    from flowrl.core.registry import Fact
    from flowrl.samplers.modes import ROLLOUT_MODES

    names = set()
    for registry in (LOSSES, ADVANTAGES, ROLLOUT_MODES):
        hints = typing.get_type_hints(registry.facts_type)
        for f in dataclasses.fields(registry.facts_type):
            kinds = [hints[f.name], *typing.get_args(hints[f.name])]
            if any(isinstance(k, type) and issubclass(k, Fact) for k in kinds):
                names.add(f.name)
    return names


def _fact_string_comparisons(tree: ast.AST, facts: set[str]) -> list[ast.Compare]:
    """``x.trains_on == "samples"``, ``trains_on(name) != "transitions"``, ``"flow" in f.trainers``."""

    def is_fact(node: ast.AST) -> bool:
        if isinstance(node, ast.Call):
            node = node.func
        return (isinstance(node, ast.Attribute) and node.attr in facts) or (
            isinstance(node, ast.Name) and node.id in facts
        )

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            if any(is_fact(s) for s in sides) and any(_is_literal(s) for s in sides):
                found.append(node)
    return found


def test_facts_are_enums_and_never_compared_with_a_string():
    facts = _enum_facts()
    assert {"trains_on", "normalizes_by", "trainers", "branching"} <= facts
    found = []
    for path in _modules().values():
        for node in _fact_string_comparisons(ast.parse(path.read_text(encoding="utf-8")), facts):
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {ast.unparse(node)}")
    assert not found, "compare a fact with its enum member (TrainsOn.SAMPLES), not a string:\n" + "\n".join(found)


def test_the_fact_rule_catches_each_idiom():
    code = (
        "a = LOSSES.facts(n).trains_on == 'samples'\nb = trains_on(cfg.loss.name) != 'transitions'\n"
        "c = 'flow' in f.trainers\nd = f.branching in ('tree', 'singular')\n"
    )
    facts = _enum_facts()
    assert len(_fact_string_comparisons(ast.parse(code), facts)) == 4
    fine = "a = f.trains_on is TrainsOn.SAMPLES\nb = Backend.FLOW in f.trainers\nc = f.window == ('fixed', 0)\n"
    assert _fact_string_comparisons(ast.parse(fine), facts) == []
