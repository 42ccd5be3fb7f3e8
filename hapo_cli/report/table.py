"""The results table (Markdown and CSV) shared by `hapo ablate` and `hapo report`.

One row a variant: final validation metrics (the run's `val_metric` at its last validation, plus
pass@k and maj@n of the same validation) as mean ± std over the finished seeds (std with n-1,
`-` for one seed), in %, the step those numbers are taken at, and the difference of the mean to
the DAPO baseline row (or to the first row when there is none) in points. Failed and unfinished
runs, reruns of a seed and folders that never trained are listed under the table, and a warning
says so when the compared runs end at different steps.
"""

from __future__ import annotations

import csv
import io
import re
import statistics
from pathlib import Path

from hapo_cli.report.collect import Collection, VariantData
from hapo_cli.runs import sweep as st
from hapo_cli.runs.files import atomic_write_text


def _key_order(key: str) -> tuple[int, int]:
    m = re.match(r"^val/(avg|pass|maj)@(\d+)$", key)
    kind, k = (m.group(1), int(m.group(2))) if m else ("", 0)
    return ({"avg": 0, "pass": 1, "maj": 2}.get(kind, 3), k)


def metric_keys(col: Collection) -> list[str]:
    keys = {k for v in col.variants for r in v.finished for k in r.final()[1]}
    return sorted(keys, key=_key_order)


def primary_key(col: Collection) -> str | None:
    for v in col.variants:
        for r in v.finished:
            if r.summary.get("val_metric"):
                return r.summary["val_metric"]
    return None


def baselines(col: Collection) -> dict[str, VariantData]:
    """The reference row of each group (sweep): its DAPO baseline, else its first row."""
    out: dict[str, VariantData] = {}
    for v in col.variants:
        if v.group not in out or (v.is_baseline and not out[v.group].is_baseline):
            out[v.group] = v
    return out


def _delta_header(col: Collection, main: str) -> str:
    bases = baselines(col)
    target = next(iter(bases.values())).name if len(bases) == 1 else "its sweep's baseline"
    return f"Δ {_short(main)} vs {target}"


def delta(col: Collection, v: VariantData, key: str) -> float | None:
    """mean(v) - mean(the baseline of v's group), None when either has no value."""
    base = baselines(col).get(v.group)
    if base is None:
        return None
    mean, base_mean = stats(v, key)[0], stats(base, key)[0]
    return None if mean is None or base_mean is None else mean - base_mean


def stats(v: VariantData, key: str) -> tuple[float | None, float | None, int]:
    """(mean, std with n-1 or None, n) of `key` over the variant's finished runs."""
    vals = [r.final()[1][key] for r in v.finished if key in r.final()[1]]
    if not vals:
        return None, None, 0
    mean = statistics.fmean(vals) if len(vals) > 1 else vals[0]
    return mean, (statistics.stdev(vals) if len(vals) > 1 else None), len(vals)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _short(key: str) -> str:
    return key.removeprefix("val/")


def _seeds(v: VariantData) -> str:
    n, total = len(v.finished), len(v.runs)
    return str(n) if n == total else f"{n}/{total}"


def final_steps(v: VariantData) -> list[int]:
    """The step of each finished run's last validation (sorted)."""
    return sorted(s for r in v.finished if (s := r.final()[0]) is not None)


def _step_cell(v: VariantData) -> str:
    steps = final_steps(v)
    return _step_cell_of(steps) if steps else "-"


def step_warning(col: Collection) -> str | None:
    """One line when the compared runs end at different steps (or were set up for different
    trainer.total_steps), else None."""
    ends = {v.name: final_steps(v) for v in col.variants if final_steps(v)}
    totals = sorted({r.total_steps for v in col.variants for r in v.finished if r.total_steps is not None})
    if len({s for steps in ends.values() for s in steps}) <= 1 and len(totals) <= 1:
        return None
    where = "; ".join(f"{name}: {_step_cell_of(steps)}" for name, steps in ends.items())
    total = f" (trainer.total_steps {', '.join(map(str, totals))})" if len(totals) > 1 else ""
    return (f"warning: the compared runs end at different steps{total}: {where}. Each number is taken at its "
            "run's last validation, so rows are not compared like for like.")


def _step_cell_of(steps: list[int]) -> str:
    return str(steps[0]) if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"


def _components(v: VariantData) -> str:
    if v.components is None:
        return "?"
    return "+".join(v.components) or "-"


def markdown(col: Collection) -> str:
    """The table and the lists of failed / unfinished runs, as Markdown."""
    keys = metric_keys(col)
    main = primary_key(col)
    bases = set(map(id, baselines(col).values()))
    has_ref = any(v.reference is not None for v in col.variants)
    head = ["variant", "components", "seeds", "step", *[f"{_short(k)} (%)" for k in keys]]
    if main:
        head.append(_delta_header(col, main))
    if has_ref:
        head.append("reference")
    lines = ["| " + " | ".join(head) + " |", "|:---|:---|" + "---:|" * (len(head) - 2)]
    for v in col.variants:
        cells = [v.name, _components(v), _seeds(v), _step_cell(v)]
        for k in keys:
            mean, std, n = stats(v, k)
            cells.append("-" if mean is None else f"{_pct(mean)} ± {_pct(std)}")
        if main:
            d = delta(col, v, main)
            cells.append("(baseline)" if id(v) in bases else "-" if d is None else f"{100 * d:+.2f}")
        if has_ref:
            cells.append("-" if v.reference is None else f"{v.reference:g}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if main:
        notes.append(f"Validation accuracy in % at each run's last validation ({_short(main)} is summary.json's "
                     "val_metric, taken at the step shown); mean ± std over finished seeds (std with n-1, - for "
                     "one seed); Δ in points.")
        warn = step_warning(col)
        if warn:
            notes.append(warn)
    else:
        notes.append("No finished run with validation metrics yet.")
    if has_ref:
        notes.append(f"reference: {col.reference_label or 'as given in the spec'}.")
    failed = [(v, r) for v in col.variants for r in v.runs if r.status == st.FAILED]
    if failed:
        notes.append("\nFailed runs:")
        notes += [f"- {r.id} (exit {r.returncode}): {r.error}" for _, r in failed]
    other = [(v, r) for v, r in col.unfinished if r.status != st.FAILED]
    if other:
        notes.append("\nNot finished:")
        notes += [f"- {r.id} ({r.status})" for _, r in other]
    if col.notes:
        notes.append("\nLeft out:")
        notes += [f"- {n}" for n in col.notes]
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def csv_number(x: float | None) -> str:
    """A CSV cell: full precision, empty for None."""
    return "" if x is None else repr(float(x))


def results_csv(col: Collection) -> str:
    """One line a variant, raw fractions (not %), full precision."""
    keys = metric_keys(col)
    main = primary_key(col)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["variant", "components", "is_baseline", "seeds_finished", "seeds_planned", "step",
                *[f"{_short(k)}_{s}" for k in keys for s in ("mean", "std")],
                f"delta_{_short(main)}" if main else "delta", "reference"])
    for v in col.variants:
        row = [v.name, _components(v), int(v.is_baseline), len(v.finished), len(v.runs), _step_cell(v)]
        for k in keys:
            mean, std, _ = stats(v, k)
            row += [csv_number(mean), csv_number(std)]
        row.append(csv_number(delta(col, v, main)) if main else "")
        row.append(csv_number(v.reference))
        w.writerow(row)
    return out.getvalue()


def runs_csv(col: Collection) -> str:
    """One line a run: status, final step and values, error."""
    keys = metric_keys(col)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["run", "variant", "seed", "status", "step", *[_short(k) for k in keys], "returncode", "error", "run_dir"])
    for v in col.variants:
        for r in v.runs:
            step, vals = r.final() if r.summary else (None, {})
            w.writerow([r.id, v.name, "" if r.seed is None else r.seed, r.status, "" if step is None else step,
                        *[csv_number(vals.get(k)) for k in keys], "" if r.returncode is None else r.returncode,
                        r.error or "", str(r.run_dir)])
    return out.getvalue()


def write_tables(col: Collection, out_dir: Path) -> str:
    """results.md, results.csv and runs.csv in `out_dir`; returns the Markdown."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = markdown(col)
    atomic_write_text(out_dir / "results.md", md)
    atomic_write_text(out_dir / "results.csv", results_csv(col))
    atomic_write_text(out_dir / "runs.csv", runs_csv(col))
    return md
