"""Rules of the code's shape that live in CI rather than in review."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: the code that runs methods: it asks a method's registered facts, never its name
RECIPES = [*sorted((REPO / "flowrl" / "trainer").glob("*.py")), REPO / "flowrl" / "config.py",
           REPO / "flowrl" / "text_config.py", REPO / "flowrl" / "bench.py"]  # fmt: skip
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
