"""The paper's main-table layout from `hapo eval --runs` results (paper.md, paper.csv, paper.png).

One row a method (a sweep variant, or a group of loose runs): one column a benchmark plus the
average, each the mean ± std (n-1) over seeds of avg@n in %, read from each run's
`<run>/eval/<checkpoint>/summary.json` (the highest step evaluated); the checkpoint step; the
difference of the average to the DAPO row in points; the paper's number beside ours when the row
carries the paper's numbers for the runs' model (a spec row's `paper:`, e.g. ablations/
paper_main.yaml run with a paper preset); and, where runs saved rollouts, the share of
high-entropy "critical" tokens (`hapo analyze`), for the temperature study (ablations/ats_temperature.yaml).
The average of a run is the mean of its benchmarks; the row's average is the mean of its runs'.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from hapo_cli.report.collect import Collection, RunData, VariantData
from hapo_cli.report.table import csv_number
from hapo_cli.runs.files import atomic_write_text

EVAL_DIR = "eval"  # written by `hapo eval --runs` (evaluate/command.py)
AVG = "average"


@dataclass
class RunEval:
    step: int | None  # the checkpoint's step
    scores: dict[str, float]  # bench -> avg@n (fraction)
    n: int  # samples per question
    path: Path  # the summary.json read


def run_eval(run: RunData) -> RunEval | None:
    """The run's evaluated checkpoint with the highest step (None when it has none)."""
    root = run.run_dir / EVAL_DIR
    found = sorted(p for p in root.glob("*/summary.json")) if root.is_dir() else []
    if not found:
        return None
    path = found[-1]
    summaries = json.loads(path.read_text())
    name = path.parent.name
    step = int(name.removeprefix("step_")) if name.removeprefix("step_").isdigit() else None
    scores = {s["bench"]: float(s[f"avg@{s['n']}"]) for s in summaries}
    return RunEval(step, scores, int(summaries[0]["n"]), path)


@dataclass
class Row:
    variant: VariantData
    evals: list[RunEval] = field(default_factory=list)
    critical: list[float] = field(default_factory=list)  # high-entropy token share per run (fraction)

    def values(self, bench: str) -> list[float]:
        if bench == AVG:
            return [statistics.fmean(e.scores.values()) for e in self.evals if e.scores]
        return [e.scores[bench] for e in self.evals if bench in e.scores]


def mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    if not vals:
        return None, None
    return (statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None)


def _critical_share(run: RunData) -> float | None:
    from hapo_cli.report.analyze import analyze_run

    a = analyze_run(run.run_dir, None, None, max_files=40)
    share = a.get("high_entropy_share") if a else None
    return share if isinstance(share, float) and share == share else None


def rows_of(col: Collection) -> list[Row]:
    """A row for each variant with at least one evaluated run."""
    rows = []
    for v in col.variants:
        row = Row(v)
        for r in v.runs:
            e = run_eval(r)
            if e is not None:
                row.evals.append(e)
                c = _critical_share(r)
                if c is not None:
                    row.critical.append(c)
        if row.evals:
            rows.append(row)
    return rows


def benches_of(rows: list[Row]) -> list[str]:
    seen: dict[str, None] = {}
    for row in rows:
        for e in row.evals:
            seen.update(dict.fromkeys(e.scores))
    return list(seen)


def model_of(rows: list[Row]) -> str | None:
    """The one model.name_or_path all evaluated runs were trained from (None when they differ)."""
    models = {(r.config.get("model") or {}).get("name_or_path") for row in rows for r in row.variant.runs
              if run_eval(r) is not None}
    return models.pop() if len(models) == 1 else None


def paper_of(row: Row, model: str | None) -> dict[str, float]:
    """The paper's numbers of this row for `model` ({} when there are none)."""
    if not model or not row.variant.paper:
        return {}
    return dict(row.variant.paper.get(model) or {})


def _base(rows: list[Row]) -> Row | None:
    return next((r for r in rows if r.variant.is_baseline), rows[0] if rows else None)


def _cell(vals: list[float], paper: float | None) -> str:
    mean, std = mean_std(vals)
    if mean is None:
        return "-"
    text = f"{100 * mean:.2f} ± {'-' if std is None else f'{100 * std:.2f}'}"
    return text + (f" ({paper:.2f})" if paper is not None else "")


def _steps(row: Row) -> str:
    steps = sorted({e.step for e in row.evals if e.step is not None})
    return "-" if not steps else str(steps[0]) if len(steps) == 1 else f"{steps[0]}-{steps[-1]}"


def markdown(col: Collection) -> str | None:
    """The paper's table as Markdown, None when no run has eval results."""
    rows = rows_of(col)
    if not rows:
        return None
    benches = benches_of(rows)
    model = model_of(rows)
    base = _base(rows)
    has_paper = any(paper_of(r, model) for r in rows)
    has_crit = any(r.critical for r in rows)
    ns = sorted({e.n for r in rows for e in r.evals})
    head = ["method", "seeds", "step", *benches, AVG, f"Δ {AVG} vs {base.variant.name}"]
    if has_crit:
        head.append("critical tokens (%)")
    lines = ["| " + " | ".join(head) + " |", "|:---|---:|---:|" + "---:|" * (len(head) - 3)]
    base_mean = mean_std(base.values(AVG))[0]
    for row in rows:
        paper = paper_of(row, model)
        cells = [row.variant.name, str(len(row.evals)), _steps(row)]
        cells += [_cell(row.values(b), paper.get("avg" if b == AVG else b)) for b in [*benches, AVG]]
        mean = mean_std(row.values(AVG))[0]
        cells.append("(baseline)" if row is base else "-" if mean is None or base_mean is None
                     else f"{100 * (mean - base_mean):+.2f}")
        if has_crit:
            c_mean, c_std = mean_std(row.critical)
            cells.append("-" if c_mean is None else f"{100 * c_mean:.2f} ± {'-' if c_std is None else f'{100 * c_std:.2f}'}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"avg@{'/'.join(map(str, ns))} in % per benchmark (mean ± std over seeds, std with n-1, - for one "
             f"seed) at the checkpoint step shown; {AVG}: the mean of a run's benchmarks, then over seeds; Δ in points."]
    if has_paper:
        notes.append(f"(in brackets): the paper's number for {model}.")
    if has_crit:
        notes.append("critical tokens: share of high-entropy tokens in the saved rollouts (hapo analyze).")
    missing = [r.id for v in col.variants for r in v.runs if r.trained and run_eval(r) is None]
    if missing:
        notes.append(f"Not evaluated yet (hapo eval --runs ...): {', '.join(missing)}.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def table_csv(col: Collection) -> str:
    """One line a method; fractions (not %), full precision; paper numbers in % as published."""
    rows = rows_of(col)
    benches = benches_of(rows)
    model = model_of(rows)
    base = _base(rows)
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["method", "seeds", "step", *[f"{b}_{s}" for b in [*benches, AVG] for s in ("mean", "std")],
                f"delta_{AVG}", "critical_mean", *[f"paper_{b}" for b in [*benches, "avg"]]])
    base_mean = mean_std(base.values(AVG))[0] if base else None
    for row in rows:
        cells = [row.variant.name, len(row.evals), _steps(row)]
        for b in [*benches, AVG]:
            cells += [csv_number(x) for x in mean_std(row.values(b))]
        mean = mean_std(row.values(AVG))[0]
        cells.append(csv_number(None if mean is None or base_mean is None else mean - base_mean))
        cells.append(csv_number(mean_std(row.critical)[0]))
        paper = paper_of(row, model)
        cells += [csv_number(paper.get(b)) for b in [*benches, "avg"]]
        w.writerow(cells)
    return out.getvalue()


def bar_chart(col: Collection, out: Path) -> Path | None:
    """Grouped bars: one group a benchmark (and the average), one bar a method, std as error bars,
    the paper's number as a black tick where there is one."""
    rows = rows_of(col)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from hapo_cli.report.plots import DPI, colors

    benches = [*benches_of(rows), AVG]
    model = model_of(rows)
    cmap = colors(col)
    width = 0.8 / len(rows)
    fig, ax = plt.subplots(figsize=(max(8.0, 1.4 * len(benches) + 4), 4.8), layout="constrained")
    ticks_drawn = False
    for j, row in enumerate(rows):
        xs = [i + (j - (len(rows) - 1) / 2) * width for i in range(len(benches))]
        stats = [mean_std(row.values(b)) for b in benches]
        ax.bar(xs, [100 * (m or 0.0) for m, _ in stats], width, yerr=[100 * (s or 0.0) for _, s in stats],
               capsize=2, label=f"{row.variant.name} (n={len(row.evals)})", color=cmap[row.variant.name][0])
        paper = paper_of(row, model)
        for x, b in zip(xs, benches):
            p = paper.get("avg" if b == AVG else b)
            if p is not None:
                ax.plot([x - width / 2, x + width / 2], [p, p], color="black", lw=2,
                        label=None if ticks_drawn else f"paper ({model})")
                ticks_drawn = True
    ax.set_xticks(range(len(benches)), benches)
    ax.set_ylabel("avg@n (%)")
    several = any(len(r.evals) > 1 for r in rows)
    ax.set_title("Main table: accuracy per benchmark" + (" (mean over seeds, bars: std)" if several else " (one seed)"),
                 fontsize=11)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(out, dpi=DPI)
    plt.close(fig)
    return out


def write_paper_table(col: Collection, out_dir: Path, plots: bool = True) -> tuple[str | None, list[Path]]:
    """paper.md, paper.csv (and paper.png) in `out_dir` when runs have eval results."""
    md = markdown(col)
    if md is None:
        return None, []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "paper.md", md)
    atomic_write_text(out_dir / "paper.csv", table_csv(col))
    written = [out_dir / "paper.md", out_dir / "paper.csv"]
    if plots:
        png = bar_chart(col, out_dir / "paper.png")
        if png is not None:
            written.append(png)
    return md, written
