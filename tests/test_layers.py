"""The layer rule of design.md, read from the imports of every module (function-level ones too):

    cli > sweep > train, report > evaluate > tasks, rollout > data > rewards > runs, models, config, seeds > algo

A module imports only from floors below its own (or its own package), never upward and never
sideways between packages of one floor; `errors` may be imported by anyone. Also: the trainer's
modules stay readable (<= 400 lines, functions <= 60 lines).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import hapo_cli

PKG = Path(hapo_cli.__file__).parent
FLOORS = [["cli"], ["sweep"], ["train", "report"], ["evaluate"], ["tasks", "rollout"], ["data"], ["rewards"],
          ["preflight"], ["runs", "models", "config", "seeds"], ["algo"]]
FLOOR = {unit: i for i, units in enumerate(FLOORS) for unit in units}
ANYONE = {"errors", "__init__"}


def unit_of(module: str) -> str | None:
    """`hapo_cli.train.update` -> "train"; `hapo_cli.config` -> "config"; None outside hapo_cli."""
    parts = module.split(".")
    if parts[0] != "hapo_cli":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def imports_of(path: Path) -> list[tuple[str, int]]:
    rel = path.relative_to(PKG.parent).with_suffix("")
    here = ".".join(rel.parts)
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: -node.level] if path.name != "__init__.py" else here.split(".")[: len(here.split(".")) - node.level + 1]
                out.append((".".join(base + ([node.module] if node.module else [])), node.lineno))
            else:
                out.append((node.module or "", node.lineno))
                if node.module == "hapo_cli":  # `from hapo_cli import algo, seeds`
                    out += [(f"hapo_cli.{a.name}", node.lineno) for a in node.names]
    return out


MODULES = sorted(p for p in PKG.rglob("*.py"))


def test_every_unit_has_a_floor():
    units = {unit_of(".".join(p.relative_to(PKG.parent).with_suffix("").parts)) for p in MODULES}
    assert units - ANYONE <= set(FLOOR), f"units without a floor: {sorted(units - ANYONE - set(FLOOR))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_run_downward(path):
    mine = unit_of(".".join(path.relative_to(PKG.parent).with_suffix("").parts))
    if mine in ANYONE:
        return
    bad = []
    for module, line in imports_of(path):
        other = unit_of(module)
        if other is None or other in ANYONE or other == mine:
            continue
        if FLOOR[other] <= FLOOR[mine]:
            way = "sideways" if FLOOR[other] == FLOOR[mine] else "upward"
            bad.append(f"{path.relative_to(PKG)}:{line} imports {module} ({way}: {mine} -> {other})")
    assert not bad, "\n".join(bad)


def test_the_rule_catches_what_it_should(tmp_path):
    """The checker itself: an upward and a sideways import are found, a downward one is not."""
    assert FLOOR["evaluate"] < FLOOR["tasks"] and FLOOR["train"] == FLOOR["report"]
    assert unit_of("hapo_cli.train.update") == "train" and unit_of("hapo_cli.config") == "config"
    assert unit_of("torch.nn") is None


TRAIN = sorted((PKG / "train").glob("*.py"))


@pytest.mark.parametrize("path", TRAIN, ids=lambda p: p.name)
def test_train_modules_stay_readable(path):
    text = path.read_text()
    assert len(text.splitlines()) <= 400, f"{path.name}: {len(text.splitlines())} lines (limit 400)"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 60]
    assert not long, f"{path.name}: functions over 60 lines: {', '.join(long)}"


def test_train_makes_no_component_decisions():
    """Component letters live in algo/objective.py; the trainer asks the Objective."""
    import re

    for path in TRAIN:
        hits = re.findall(r"""components\[["'][ABCD]["']\]|\.on\(["'][ABCD]["']\)""", path.read_text())
        assert not hits, f"{path.name} tests component letters: {hits}"
