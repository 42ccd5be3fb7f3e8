"""What an ablation sweep runs: variants (DAPO + a set of HAPO components) x seeds.

A variant is a name, the components switched on, and extra overrides. Every variant trains as
`hapo train algorithm=dapo algorithm.components.{A,B,C,D}=...` so all of them share DAPO's base
hyperparameters (and those of an `experiment=` preset, which sets its own algorithm values).
Variants come from a mode over `--components` (grid, add-one, leave-one-out, single) or from a
spec file (ablations/*.yaml, schema below).

Spec schema (YAML)::

    name: paper                      # optional: sweep name (default: the file's stem)
    reference_label: "..."           # optional: what the rows' `reference` numbers are
    overrides: [key=value, ...]      # optional: applied to every row
    rows:                            # required, at least one
      - name: DAPO+A                 # required, unique; letters, digits and + . _ - only
        components: [A]              # required: letters A-D or names ats/tlga/dar/aac ([] = DAPO)
        overrides: [key=value, ...]  # optional: this row only (after the shared ones)
        reference: 48.85             # optional: a number to show beside the result (e.g. the paper's)
        algorithm: dapo              # optional: the algorithm preset the row trains with (default dapo;
                                     #   e.g. forking_tokens, archer, edge_grpo for the paper's main table)
        paper:                       # optional: the paper's numbers by model.name_or_path, per benchmark
          Qwen/Qwen2.5-Math-7B: {avg: 46.97, aime24: 37.24, ...}   # (shown beside `hapo report`'s paper table)
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hapo_cli.config import COMPONENT_NAMES, group_options
from hapo_cli.errors import HapoError

LETTERS = tuple(COMPONENT_NAMES)  # ("A", "B", "C", "D")
MODES = ("grid", "add-one", "leave-one-out", "single")
BASELINE_NAME = "DAPO"

# Keys a sweep sets itself on every run; overrides may not set them.
RESERVED_KEYS = ("seed", "run_dir", "resume", "run_name", "output_dir", "logger.wandb.group")
_NAME_OK = re.compile(r"^[A-Za-z0-9+._-]+$")
_ROW_FIELDS = ("name", "components", "overrides", "reference", "algorithm", "paper")
_SPEC_FIELDS = ("name", "description", "reference_label", "overrides", "rows")


@dataclass
class Variant:
    """One row of the ablation table."""

    name: str  # label in tables, plots and run folder names
    components: list[str]  # letters switched on, in A-D order ([] = the DAPO baseline)
    overrides: list[str] = field(default_factory=list)  # extra Hydra overrides of this row
    reference: float | None = None  # a number to show beside the result (e.g. the paper's)
    algorithm: str = "dapo"  # the algorithm preset (conf/algorithm/<name>.yaml) the components go on
    paper: dict[str, dict[str, float]] | None = None  # the paper's numbers: {model id: {bench or avg: %}}

    def train_overrides(self) -> list[str]:
        """`algorithm=<preset>` (dapo unless the row names one) and all four switches, then this row's overrides."""
        on = set(self.components)
        return [f"algorithm={self.algorithm}",
                *(f"algorithm.components.{k}={'true' if k in on else 'false'}" for k in LETTERS), *self.overrides]

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "components": list(self.components), "overrides": list(self.overrides),
                "reference": self.reference, "algorithm": self.algorithm, "paper": self.paper}


@dataclass
class PlannedRun:
    """One `hapo train` process of the sweep."""

    id: str  # unique, also the run folder name: <variant>-seed<S>
    variant: str  # Variant.name
    seed: int
    overrides: list[str]  # every train override except run_dir and resume

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "variant": self.variant, "seed": self.seed, "overrides": list(self.overrides)}


def variant_name(components: list[str]) -> str:
    return "+".join([BASELINE_NAME, *components])


def parse_components(text: str | list | tuple, where: str = "--components") -> list[str]:
    """'A,B' / 'A+B' / ['A', 'tlga'] -> ['A', 'B'] (A-D order, no duplicates)."""
    by_name = {v: k for k, v in COMPONENT_NAMES.items()}
    items = re.split(r"[,+\s]+", text) if isinstance(text, str) else list(text)
    out = set()
    for item in items:
        if not isinstance(item, str):
            raise HapoError(f"{where}: component {item!r} is not a letter or name; use A, B, C, D (or ats, tlga, dar, aac)")
        key = item.strip()
        if not key:
            continue
        letter = key.upper() if key.upper() in COMPONENT_NAMES else by_name.get(key.lower())
        if letter is None:
            raise HapoError(f"{where}: unknown component {key!r}; use A, B, C, D (or ats, tlga, dar, aac)")
        out.add(letter)
    return [k for k in LETTERS if k in out]


def mode_variants(components: list[str], mode: str, include_baseline: bool = False) -> list[Variant]:
    """The variants of a mode over the named components."""
    if mode not in MODES:
        raise HapoError(f"unknown --mode {mode!r}; choose one of: {', '.join(MODES)}")
    if not components:
        raise HapoError("name the components to ablate: --components A,B (letters A-D)")
    if mode == "grid":
        sets = [list(c) for r in range(len(components) + 1) for c in itertools.combinations(components, r)]
    elif mode == "add-one":
        sets = [[]] + [[c] for c in components]
    elif mode == "leave-one-out":
        sets = [list(components)] + [[k for k in components if k != c] for c in components]
    else:
        sets = ([[]] if include_baseline else []) + [list(components)]
    seen, out = set(), []
    for s in sets:
        if tuple(s) not in seen:
            seen.add(tuple(s))
            out.append(Variant(variant_name(s), s))
    return out


def check_overrides(overrides: list[str], where: str) -> list[str]:
    """key=value strings that leave the sweep's own keys and the algorithm/components alone."""
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise HapoError(f"{where}: overrides must be a list of key=value strings")
    for o in overrides:
        key, eq, _ = o.lstrip("+~").partition("=")
        if not eq:
            raise HapoError(f"{where}: override {o!r} is not key=value (e.g. trainer.total_steps=50)")
        if key in RESERVED_KEYS:
            raise HapoError(f"{where}: {key} is set by the sweep for every run; use --seeds / --sweep-dir / --name instead")
        if key == "algorithm" or key.startswith("algorithm.components"):
            raise HapoError(f"{where}: {o!r} would change the variant; every variant is algorithm=dapo plus its "
                            "components (--components, or a spec row's components)")
    return overrides


@dataclass
class Spec:
    name: str
    variants: list[Variant]
    overrides: list[str]
    reference_label: str | None


def load_spec(path: str | Path) -> Spec:
    """Read and validate an ablation spec; every problem is one line naming the file and field."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise HapoError(f"spec file {str(p)!r} does not exist (see ablations/paper.yaml for the format)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HapoError(f"{p}: not valid YAML ({first})") from None
    if not isinstance(data, dict):
        raise HapoError(f"{p}: expected a mapping with a `rows:` list (see ablations/paper.yaml)")
    unknown = sorted(set(data) - set(_SPEC_FIELDS))
    if unknown:
        raise HapoError(f"{p}: unknown field {unknown[0]!r}; valid fields: {', '.join(_SPEC_FIELDS)}")
    rows = data.get("rows")
    if not isinstance(rows, list) or not rows:
        raise HapoError(f"{p}: `rows` must be a non-empty list of {{name, components, overrides, reference}}")
    shared = check_overrides(list(data.get("overrides") or []), f"{p}: overrides")
    variants: list[Variant] = []
    names: set[str] = set()
    combos: dict[tuple, str] = {}
    for i, row in enumerate(rows):
        where = f"{p}: rows[{i}]"
        if not isinstance(row, dict):
            raise HapoError(f"{where}: expected a mapping with name and components")
        unknown = sorted(set(row) - set(_ROW_FIELDS))
        if unknown:
            raise HapoError(f"{where}: unknown field {unknown[0]!r}; valid fields: {', '.join(_ROW_FIELDS)}")
        name = row.get("name")
        if not isinstance(name, str) or not _NAME_OK.match(name):
            raise HapoError(f"{where}: name must be a string of letters, digits and + . _ - (got {name!r})")
        if name in names:
            raise HapoError(f"{where}: duplicate row name {name!r}")
        names.add(name)
        if "components" not in row:
            raise HapoError(f"{where} ({name}): missing `components` (a list of A-D; [] for the DAPO baseline)")
        comps = row["components"]
        if comps is None:
            comps = []
        if not isinstance(comps, (list, str)):
            raise HapoError(f"{where} ({name}): components must be a list like [A, B] or []")
        letters = parse_components(comps, f"{where} ({name}).components")
        extra = check_overrides(list(row.get("overrides") or []), f"{where} ({name})")
        algo_name = row.get("algorithm", "dapo")
        if not isinstance(algo_name, str) or algo_name not in group_options("algorithm"):
            raise HapoError(f"{where} ({name}): algorithm must be one of {', '.join(group_options('algorithm'))} "
                            f"(conf/algorithm/), got {algo_name!r}")
        paper = _paper_numbers(row.get("paper"), f"{where} ({name}).paper")
        key = (algo_name, tuple(letters), tuple(extra))
        if key in combos:
            raise HapoError(f"{where} ({name}): same components and overrides as row {combos[key]!r}")
        combos[key] = name
        ref = row.get("reference")
        if ref is not None and (isinstance(ref, bool) or not isinstance(ref, (int, float))):
            raise HapoError(f"{where} ({name}): reference must be a number (got {ref!r})")
        variants.append(Variant(name, letters, extra, None if ref is None else float(ref), algo_name, paper))
    label = data.get("reference_label")
    spec_name = data.get("name") or p.stem
    if not isinstance(spec_name, str) or not _NAME_OK.match(spec_name):
        raise HapoError(f"{p}: name must be letters, digits and + . _ - (got {spec_name!r})")
    return Spec(spec_name, variants, shared, None if label is None else str(label))


def _paper_numbers(data: Any, where: str) -> dict[str, dict[str, float]] | None:
    """{model id: {benchmark or avg: number}}, every value a number (one line otherwise)."""
    if data is None:
        return None
    ok = isinstance(data, dict) and all(
        isinstance(m, str) and isinstance(v, dict) and v and all(
            isinstance(b, str) and isinstance(x, (int, float)) and not isinstance(x, bool) for b, x in v.items())
        for m, v in data.items())
    if not ok:
        raise HapoError(f"{where}: expected {{model id: {{benchmark: number, ...}}}}, e.g. "
                        "{Qwen/Qwen2.5-Math-7B: {avg: 46.97, aime24: 37.24}}")
    return {m: {b: float(x) for b, x in v.items()} for m, v in data.items()}


def plan_runs(variants: list[Variant], seeds: list[int], base_overrides: list[str], group: str) -> list[PlannedRun]:
    """Variant x seed, variant-major. Overrides in order (a later one wins): algorithm=dapo and the
    four switches, `base_overrides` (a spec's shared ones, then the command line's), the row's,
    then seed and the W&B group."""
    runs = []
    for v in variants:
        for s in seeds:
            base = v.train_overrides()
            ov = base[:5] + list(base_overrides) + base[5:] + [f"seed={s}", f"logger.wandb.group={group}"]
            runs.append(PlannedRun(f"{v.name}-seed{s}", v.name, s, ov))
    return runs


def default_sweep_name(stem: str, base_overrides: list[str]) -> str:
    """`stem`, plus `-<experiment>` when an experiment preset is given."""
    for o in base_overrides:
        key, _, value = o.partition("=")
        if key == "experiment" and value not in ("", "null"):
            return f"{stem}-{value}"
    return stem


def hydra_quote(value: str) -> str:
    """A path as a Hydra override value (quoted when it holds characters the grammar reserves)."""
    if re.fullmatch(r"[A-Za-z0-9_+./:-]+", value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
