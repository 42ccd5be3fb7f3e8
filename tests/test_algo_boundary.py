"""The import boundary of hapo_cli.algo: torch and a few standard-library modules, nothing else."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import hapo_cli.algo as algo

ALGO_DIR = Path(algo.__file__).parent
ALLOWED = {
    "torch", "typing", "math", "dataclasses", "__future__", "collections", "functools",
    "enum", "abc", "itertools", "numbers", "hapo_cli",
}  # fmt: skip
HEAVY = (
    "numpy",
    "transformers",
    "hydra",
    "omegaconf",
    "datasets",
    "accelerate",
    "vllm",
    "wandb",
    "typer",
    "scipy",
)


def _imports(path: Path) -> list[tuple[str, int]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.append((node.module or "", node.lineno))
    return out


def test_algo_sources_import_only_torch_and_stdlib():
    files = sorted(ALGO_DIR.rglob("*.py"))
    assert {f.name for f in files} >= {
        "__init__.py",
        "entropy.py",
        "ats.py",
        "advantages.py",
        "dar.py",
        "aac.py",
        "forking.py",
        "archer.py",
        "edge.py",
        "gspo.py",
        "cispo.py",
        "cov.py",
        "rollout_is.py",
    }
    bad = []
    for f in files:
        for name, line in _imports(f):
            top = name.split(".")[0]
            if top not in ALLOWED or (top == "hapo_cli" and not name.startswith("hapo_cli.algo")):
                bad.append(f"{f.name}:{line} imports {name}")
    assert not bad, "hapo_cli.algo must import torch / stdlib only:\n" + "\n".join(bad)


def test_importing_algo_pulls_in_no_heavy_dependency():
    # torch itself may import numpy, so compare against a bare `import torch`.
    code = (
        "import sys, json, torch; before = set(sys.modules); import hapo_cli.algo; "
        "print(json.dumps(sorted(set(sys.modules) - before)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    new = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "hapo_cli.algo" in new
    heavy = [m for m in new if m.split(".")[0] in HEAVY]
    assert not heavy, f"importing hapo_cli.algo imported {heavy}"
    outside = [m for m in new if not m.startswith("hapo_cli")]
    assert all(m.split(".")[0] in ALLOWED or m.split(".")[0] in sys.stdlib_module_names for m in outside), (
        outside
    )


def test_public_api_is_exported():
    expected = {
        "token_entropy", "token_logprobs", "EntropyStats", "entropy_stats", "normalize_entropy",
        "adaptive_temperature", "grpo_advantages", "tlga_advantages", "adaptive_clip_bounds",
        "redistribute_advantages", "policy_loss", "overlong_penalty", "informative_groups",
        "ADVANTAGE_ESTIMATORS", "LOSS_AGG_MODES",
        # baselines (baselines-spec.md)
        "forking_token_mask", "forking_loss", "archer_high_entropy", "archer_loss", "archer_kl_loss",
        "edge_advantages", "eda_scale", "edge_loss", "gspo_loss", "cispo_loss", "clip_cov_loss", "kl_cov_loss",
        "rollout_is_weights", "rollout_rejection_mask", "behaviour_logprobs",
    }  # fmt: skip
    assert expected <= set(algo.__all__)
    assert all(hasattr(algo, name) for name in algo.__all__)
    assert algo.LOSS_AGG_MODES == (
        "token-mean",
        "seq-mean-token-mean",
        "seq-mean-token-sum",
        "seq-mean-token-sum-norm",
    )
