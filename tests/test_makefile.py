"""The Makefile's documented targets are thin wrappers: `make -n` shows exactly the CLI command, the
variables pass through, and the options they use are real options of the commands."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCHES = "aime24,aime25,amc23,math500,olympiadbench,minerva"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")

CASES = [
    ("install", [], ['python -m pip install "torch==2.13.0" -e .']),
    ("test", [], ['python -m pip install "torch==2.13.0" -e ".[dev]"', "python -m pytest -q"]),
    ("demo", [], ["hapo train"]),
    ("demo", ["OVERRIDES=trainer.total_steps=5 seed=1"], ["hapo train trainer.total_steps=5 seed=1"]),
    ("baseline", [], ["hapo train algorithm=dapo"]),
    ("baseline", ["EXP=dapo_qwen2.5_math_7b"], ["hapo train algorithm=dapo experiment=dapo_qwen2.5_math_7b"]),
    ("hapo", ["OVERRIDES=trainer.lr=1e-5"], ["hapo train algorithm=hapo trainer.lr=1e-5"]),
    ("ablate-paper", [], ["hapo ablate --spec ablations/paper.yaml --seeds 1"]),
    ("ablate-paper", ["EXP=hapo_qwen2.5_math_7b", "SEEDS=3", "OVERRIDES=trainer.total_steps=100"],
     ["hapo ablate --spec ablations/paper.yaml --seeds 3 experiment=hapo_qwen2.5_math_7b trainer.total_steps=100"]),
    ("ablate-loo", [], ["hapo ablate --spec ablations/leave_one_out.yaml --seeds 1"]),
    ("ablate-loo", ["SEEDS=2", "EXP=debug"], ["hapo ablate --spec ablations/leave_one_out.yaml --seeds 2 experiment=debug"]),
    ("sweep-seeds", [], ["hapo ablate --components A,B,C,D --mode single --include-baseline --seeds 3"]),
    ("sweep-seeds", ["SEEDS=5", "OVERRIDES=logger=none"],
     ["hapo ablate --components A,B,C,D --mode single --include-baseline --seeds 5 logger=none"]),
    ("eval-all", ["MODEL=tiny"], [f"hapo eval --bench {BENCHES} --model tiny"]),
    ("eval-all", ["MODEL=runs/x/checkpoints/step_000060", "OVERRIDES=n=4"],
     [f"hapo eval --bench {BENCHES} --model runs/x/checkpoints/step_000060 n=4"]),
    ("paper-table", ["MODEL=qwen2.5-math-7b", "EXP=hapo_qwen2.5_math_7b", "SEEDS=3"],
     ["hapo ablate --spec ablations/paper_main.yaml --seeds 3 --sweep-dir runs/sweeps/paper_main-hapo_qwen2.5_math_7b-"
      "qwen2.5-math-7b model=qwen2.5-math-7b experiment=hapo_qwen2.5_math_7b",
      f"hapo eval --runs runs/sweeps/paper_main-hapo_qwen2.5_math_7b-qwen2.5-math-7b --bench {BENCHES}",
      "hapo report runs/sweeps/paper_main-hapo_qwen2.5_math_7b-qwen2.5-math-7b"]),
    ("report", [], ["hapo report runs/sweeps"]),
    ("report", ["SWEEP=runs/sweeps/paper"], ["hapo report runs/sweeps/paper"]),
    ("analyze", ["SWEEP=runs/hapo-x"], ["hapo analyze runs/hapo-x"]),
    ("analyze", ["SWEEP=runs/hapo-x", "STEPS=100:"], ["hapo analyze runs/hapo-x --steps 100:"]),
]


def make_n(target: str, variables: list[str]) -> list[str]:
    res = subprocess.run(["make", "-n", "--no-print-directory", target, *variables], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return [" ".join(line.split()) for line in res.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("target, variables, expect", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_make_n_shows_the_documented_command(target, variables, expect):
    assert make_n(target, variables) == expect


def test_eval_all_requires_model():
    res = subprocess.run(["make", "-n", "--no-print-directory", "eval-all"], cwd=REPO, capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 2
    assert "make eval-all needs MODEL=: a checkpoint folder, a Hub id, or tiny (the built-in model)" in res.stderr


def test_every_documented_target_is_tested():
    text = (REPO / "Makefile").read_text()
    documented = re.findall(r"^([a-z][a-z0-9-]*):[^\n]*##", text, flags=re.M)
    tested = {c[0] for c in CASES}
    assert tested <= set(documented)
    assert {"install", "test", "demo", "baseline", "hapo", "ablate-paper", "ablate-loo", "sweep-seeds", "eval-all",
            "paper-table", "report"} <= set(documented)


def test_the_commands_parse_with_the_real_cli_options():
    """Every `hapo ablate|report|eval` line the Makefile shows parses with that command's options."""
    import shlex

    import typer

    from hapo_cli.cli import app

    group = typer.main.get_command(app)
    seen = set()
    for target, variables, _ in CASES:
        for line in make_n(target, variables):
            argv = shlex.split(line)
            if argv[0] != "hapo":
                continue
            cmd = group.commands[argv[1]]
            ctx = cmd.make_context(argv[1], argv[2:], resilient_parsing=False)
            seen.add(argv[1])
            if argv[1] == "ablate":
                assert ctx.params["spec"] or ctx.params["components"]
    assert seen == {"train", "ablate", "eval", "report", "analyze"}
