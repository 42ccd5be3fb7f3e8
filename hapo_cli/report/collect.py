"""Reading finished (and unfinished) runs for tables and plots.

A path given to `hapo report` (or a sweep's own folder) is one of:
  * a sweep folder (sweep.json): its runs, grouped by the sweep's variants, in plan order;
  * a run folder (metrics.jsonl or config.yaml);
  * a folder of those (one level down, e.g. runs/ or runs/sweeps/).
Loose runs are grouped as seeds of one variant when their resolved configs differ only in seed,
run folder and logger settings. A group is labelled by its algorithm and components (`dapo+B`,
`hapo`; by its folder name when the config names no algorithm), plus the settings that tell two groups of the same label apart (`hapo, trainer.lr=1e-05`).
Two runs of one group with the SAME seed are a rerun, not spread: the newer finished one is kept
and the other is listed (`Collection.notes`). A folder that never trained (no metrics.jsonl
record: a stub from a failed start) is left out and listed as well.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from hapo_cli.errors import HapoError
from hapo_cli.runs import sweep as st
from hapo_cli.runs.files import read_jsonl
from hapo_cli.runs.rundir import run_label

# validation keys that go into tables: avg@n, pass@k (k > 1: pass@1 equals avg@n), maj@n
_TABLE_KEY = re.compile(r"^val/(avg|pass|maj)@(\d+)$")
_IGNORED_FOR_GROUPING = ("seed", "run_dir", "run_name", "resume", "output_dir", "logger")


@dataclass
class RunData:
    """One training run folder."""

    run_dir: Path
    id: str  # folder name (a sweep's run id)
    seed: int | None = None
    status: str = st.PENDING  # done, failed, interrupted, pending, running
    error: str | None = None  # last error line of a failed run
    returncode: int | None = None

    @cached_property
    def trained(self) -> bool:
        """At least one step (or a summary) was written: False for a stub of a failed start."""
        return self.summary is not None or any("step" in r for r in self.records)

    @property
    def total_steps(self) -> int | None:
        """The steps the run was configured for (trainer.total_steps), None when unknown."""
        t = (self.config.get("trainer") or {}).get("total_steps")
        return int(t) if isinstance(t, (int, float)) and not isinstance(t, bool) else None

    @cached_property
    def summary(self) -> dict[str, Any] | None:
        p = self.run_dir / "summary.json"
        return json.loads(p.read_text()) if p.is_file() else None

    @cached_property
    def records(self) -> list[dict[str, Any]]:
        return read_jsonl(self.run_dir / "metrics.jsonl").records

    @cached_property
    def config(self) -> dict[str, Any]:
        import yaml

        p = self.run_dir / "config.yaml"
        return (yaml.safe_load(p.read_text()) or {}) if p.is_file() else {}

    def final(self) -> tuple[int | None, dict[str, float]]:
        """(step, {val/avg@n, val/pass@k, val/maj@n}) of the last record holding the run's val_metric."""
        s = self.summary
        key = s.get("val_metric") if s else None
        if not key:
            return None, {}
        for rec in reversed(self.records):
            if key in rec:
                vals = {k: float(v) for k, v in rec.items() if _TABLE_KEY.match(k) and k != "val/pass@1"}
                return rec.get("step"), vals
        return None, {}

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of a metric, finite values only."""
        xs, ys = [], []
        for rec in self.records:
            v = rec.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                xs.append(int(rec["step"]))
                ys.append(float(v))
        return xs, ys

    def rollout_files(self) -> list[Path]:
        return sorted((self.run_dir / "rollouts").glob("step_*.jsonl"))


@dataclass
class VariantData:
    """A row of the table / a line of the plots: the seeds of one variant."""

    name: str
    components: list[str] | None = None  # letters on (None: unknown)
    is_baseline: bool = False  # the DAPO baseline (algorithm dapo, no component)
    reference: float | None = None  # number to show beside (e.g. the paper's)
    runs: list[RunData] = field(default_factory=list)
    group: str = ""  # the sweep it belongs to ("" for loose runs): deltas compare within a group
    paper: dict[str, dict[str, float]] | None = None  # the paper's numbers {model id: {bench or avg: %}}

    @property
    def finished(self) -> list[RunData]:
        return [r for r in self.runs if r.summary is not None]


@dataclass
class Collection:
    variants: list[VariantData]
    reference_label: str | None = None
    sources: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what was left out and why (duplicates, stubs)

    @property
    def unfinished(self) -> list[tuple[VariantData, RunData]]:
        return [(v, r) for v in self.variants for r in v.runs if r.summary is None]


def load_sweep(sweep_dir: Path, prefix: str = "") -> Collection:
    """A sweep's runs by variant (state from sweep.json, completion from the run folders)."""
    state = st.load_state(sweep_dir)
    if state is None:
        raise HapoError(f"{sweep_dir} is not a sweep folder (no {st.STATE_FILE})")
    variants = {v["name"]: VariantData(prefix + v["name"], list(v["components"]),
                                       not v["components"] and v.get("algorithm", "dapo") == "dapo",
                                       v.get("reference"), group=str(sweep_dir), paper=v.get("paper"))
                for v in state["variants"]}
    for r in state["runs"]:
        rd = Path(sweep_dir) / r["id"]
        files = st.run_files_status(rd)
        if files == st.DONE:
            status = st.DONE
        elif r.get("status") == st.FAILED:
            status = st.FAILED
        else:
            status = files
        variants[r["variant"]].runs.append(
            RunData(rd, r["id"], r.get("seed"), status, r.get("error") if status == st.FAILED else None,
                    r.get("returncode")))
    return Collection(list(variants.values()), state.get("reference_label"), [Path(sweep_dir)])


def _components_of(config: dict[str, Any]) -> list[str]:
    from hapo_cli.config import AlgorithmConfig, ComponentsConfig

    comps = (config.get("algorithm") or {}).get("components") or {}
    known = {k: v for k, v in comps.items() if k in ComponentsConfig.__dataclass_fields__}
    algo = AlgorithmConfig(components=ComponentsConfig(**known))
    return [k for k, on in algo.enabled().items() if on]


def _fingerprint(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if k not in _IGNORED_FOR_GROUPING}, sort_keys=True, default=str)


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        if k in _IGNORED_FOR_GROUPING and not prefix:
            continue
        out.update(_flat(v, f"{prefix}{k}." if isinstance(v, dict) else f"{prefix}{k}"))
    return out


def _started(run: RunData) -> str:
    """meta.json's start time (sortable), else the folder's modification time."""
    p = run.run_dir / "meta.json"
    try:
        return str(json.loads(p.read_text()).get("started") or "")
    except (OSError, ValueError):
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(run.run_dir.stat().st_mtime))


def _drop_duplicate_seeds(v: VariantData, notes: list[str]) -> None:
    """Keep one run per seed: the newest finished one (else the newest); list the others."""
    by_seed: dict[Any, list[RunData]] = {}
    for r in v.runs:
        by_seed.setdefault(r.seed, []).append(r)
    keep = []
    for seed, rs in by_seed.items():
        if len(rs) == 1 or seed is None:
            keep += rs
            continue
        best = max(rs, key=lambda r: (r.summary is not None, _started(r), r.id))
        keep.append(best)
        others = ", ".join(str(r.run_dir) for r in rs if r is not best)
        notes.append(f"duplicate: {others} repeat(s) seed {seed} of {best.run_dir} with the same config "
                     f"(a rerun, not another seed); kept {best.run_dir} ({'finished' if best.summary else best.status}"
                     f", newer), left out {others}")
    v.runs = [r for r in v.runs if r in keep]


def load_runs(run_dirs: list[Path]) -> Collection:
    """Loose run folders, grouped as seeds when their configs match (see the module docstring)."""
    groups: dict[str, VariantData] = {}
    configs: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for rd in run_dirs:
        run = RunData(rd, rd.name)
        if not run.trained:
            notes.append(f"skipped: {rd} never trained (no step in metrics.jsonl): a stub of a failed start")
            continue
        cfg = run.config
        run.seed = cfg.get("seed")
        run.status = st.run_files_status(rd)
        key = _fingerprint(cfg) if cfg else f"dir:{rd}"
        if key not in groups:
            comps = _components_of(cfg) if cfg else None
            algo_name = (cfg.get("algorithm") or {}).get("name")
            name = run_label(algo_name, "".join(comps or [])) if algo_name else ""  # "": by folder, below
            groups[key] = VariantData(name, comps, algo_name == "dapo" and comps == [])
            configs[key] = _flat(cfg)
        groups[key].runs.append(run)
    for v in groups.values():
        _drop_duplicate_seeds(v, notes)
        if not v.name:  # no algorithm in the config: the folder name (without -seedN for seeds)
            v.name = (re.sub(r"[-_]?seed\d+$", "", v.runs[0].id) or v.runs[0].id) if len(v.runs) > 1 else v.runs[0].id
    by_label: dict[str, list[str]] = {}
    for key, v in groups.items():
        by_label.setdefault(v.name, []).append(key)
    for label, keys in by_label.items():
        if len(keys) < 2:
            continue
        flats = [configs[k] for k in keys]
        differ = sorted(k for k in set().union(*flats) if len({json.dumps(f.get(k), default=str) for f in flats}) > 1)
        for key, f in zip(keys, flats):
            what = ", ".join(f"{k}={f.get(k)}" for k in differ[:2]) or groups[key].runs[0].id
            groups[key].name = f"{label}, {what}"
    return Collection(list(groups.values()), None, list(run_dirs), notes)


def _is_run_dir(p: Path) -> bool:
    return (p / "metrics.jsonl").is_file() or (p / "config.yaml").is_file()


def collect(paths: list[str | Path]) -> Collection:
    """Sweeps and runs under `paths` (see the module docstring) as one collection."""
    sweeps: list[Path] = []
    runs: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.is_dir():
            raise HapoError(f"{str(p)!r} is not a folder; give run folders, sweep folders or a folder of them")
        if st.is_sweep_dir(p):
            sweeps.append(p)
        elif _is_run_dir(p):
            runs.append(p)
        else:
            kids = sorted(c for c in p.iterdir() if c.is_dir())
            found_sweeps = [c for c in kids if st.is_sweep_dir(c)]
            found_runs = [c for c in kids if not st.is_sweep_dir(c) and _is_run_dir(c)]
            if not found_sweeps and not found_runs:
                raise HapoError(f"{p} holds no run (metrics.jsonl) or sweep (sweep.json), nor folders of them")
            sweeps += found_sweeps
            runs += found_runs
    parts = [load_sweep(s, prefix=f"{s.name}/" if len(sweeps) + bool(runs) > 1 else "") for s in sweeps]
    if runs:
        parts.append(load_runs(runs))
    labels = {c.reference_label for c in parts if c.reference_label}
    variants = [v for c in parts for v in c.variants]
    return Collection(variants, labels.pop() if len(labels) == 1 else None, [s for c in parts for s in c.sources],
                      [n for c in parts for n in c.notes])
