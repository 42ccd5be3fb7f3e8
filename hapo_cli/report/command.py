"""`hapo report DIR...`: plots (PNG) and the results table (Markdown, CSV) of runs and sweeps.

    hapo report runs/sweeps/paper                  # a sweep: one line a variant, bands over seeds
    hapo report runs/dapo-x runs/hapo-x            # runs (configs equal but for seed: one variant)
    hapo report runs/sweeps --out figures/         # every sweep in a folder
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import typer


def report_command(
    dirs: list[str] = typer.Argument(None, help="Run folders, sweep folders (sweep.json), or folders of them."),
    out: str = typer.Option(None, "--out", "-o", help="Output folder (default: <first DIR>/report/)."),
    smooth: int = typer.Option(1, "--smooth", help="Rolling mean over N steps for the training curves (1: off)."),
    no_plots: bool = typer.Option(False, "--no-plots", help="Only the tables."),
) -> None:
    """Plots and tables of finished runs or sweeps.

    \b
    Figures (PNG, one line a variant: mean over seeds, min-max band):
      val_accuracy.png       validation accuracy (the runs' val_metric)
      entropy.png            mean token entropy of the rollouts
      response_length.png    mean response length
      reward.png             mean training reward
      clip_fractions.png     left / right clip fractions, by entropy sign
      training_dynamics.png  the six training curves on one page
      clip_by_entropy.png    which tokens hit which bound (h <= 0, h > 0)
      token_entropy.png      token entropy, correct vs wrong responses
      paper.png              benchmark accuracy a method (eval --runs)

    Tables: results.md (printed), results.csv (one line a variant), runs.csv (one line a run); the same table as `hapo ablate` prints for a sweep, with the step each number is taken at. Reruns of a seed, stubs of failed starts and runs ending at different steps are named under it. With `hapo eval --runs` results also paper.md (printed) and paper.csv: the paper's main-table layout (one row a method, one column a benchmark plus the average, Δ vs DAPO, the paper's number beside ours).
    """
    from hapo_cli.errors import HapoError
    from hapo_cli.report.collect import collect
    from hapo_cli.report.table import write_tables

    if not dirs:
        raise HapoError("give at least one run folder, sweep folder or folder of them, e.g. hapo report runs/sweeps/paper")
    if smooth < 1:
        raise HapoError(f"--smooth must be >= 1 (got {smooth})")
    col = collect(dirs)
    out_dir = Path(out) if out else Path(dirs[0]) / "report"
    md = write_tables(col, out_dir)
    typer.echo(md)
    written = [out_dir / "results.md", out_dir / "results.csv", out_dir / "runs.csv"]
    from hapo_cli.report.paper import write_paper_table

    paper_md, paper_files = write_paper_table(col, out_dir, plots=not no_plots)
    if paper_md:
        typer.echo("\n" + paper_md)
        written += paper_files
    if not no_plots:
        from hapo_cli.report.plots import all_plots

        written += all_plots(col, out_dir, smooth=smooth)
    n_runs = sum(len(v.runs) for v in col.variants)
    print(f"hapo report: {len(col.variants)} variants, {n_runs} runs -> {out_dir}", file=sys.stderr)
    for p in written:
        print(f"  {p}", file=sys.stderr)


def analyze_command(
    dirs: list[str] = typer.Argument(None, help="Run folders, sweep folders, or folders of them."),
    steps: str = typer.Option(None, "--steps", help="Steps to analyse: 10:50, 10:, :50 or 25 (default: all)."),
    top: int = typer.Option(15, "--top", help="How many forking tokens to list."),
    min_count: int = typer.Option(5, "--min-count", help="Occurrences a token needs to be listed."),
    max_files: int = typer.Option(100, "--max-files", help="Step files read per run at most, evenly spaced (0: all)."),
    out: str = typer.Option(None, "--out", "-o", help="JSON file to write (default: <first DIR>/analysis.json)."),
) -> None:
    """Token-level diagnostics from saved rollouts: entropy distribution, forking tokens, length bias, ATS temperatures.

    Per run: the token entropy distribution and the share above each step's pivot (overall, and for the first and second half of the steps), the tokens that most often carry high entropy, response length of correct vs wrong answers with the advantage mass, and the sampling temperature of high-entropy tokens vs the others. Printed as Markdown and written as JSON.
    """
    from hapo_cli.errors import HapoError
    from hapo_cli.report.analyze import analyze_run, parse_steps, to_markdown
    from hapo_cli.report.collect import collect
    from hapo_cli.runs.files import atomic_write_text

    if not dirs:
        raise HapoError("give at least one run folder, sweep folder or folder of them, e.g. hapo analyze runs/hapo-x")
    if top < 1 or min_count < 1:
        raise HapoError(f"--top and --min-count must be >= 1 (got {top}, {min_count})")
    if max_files < 0:
        raise HapoError(f"--max-files must be >= 0 (0: all; got {max_files})")
    first, last = parse_steps(steps)
    col = collect(dirs)
    results = []
    for v in col.variants:
        for r in v.runs:
            a = analyze_run(r.run_dir, first, last, top=top, min_count=min_count, max_files=max_files or None)
            if a is not None:
                name = v.name if len(v.runs) == 1 else f"{v.name} / {r.id}"
                results.append({"name": name, **a})
                typer.echo(to_markdown(name, a))
    if not results:
        where = f" in steps {steps}" if steps else ""
        raise HapoError(f"no saved rollouts{where} under {', '.join(dirs)}: runs save them with save_rollouts=true "
                        "(the default) in <run>/rollouts/")
    path = Path(out) if out else Path(dirs[0]) / "analysis.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_nan_to_none(results), indent=1) + "\n")
    print(f"hapo analyze: {len(results)} run(s) -> {path}", file=sys.stderr)


def _nan_to_none(x):
    """NaN (a statistic with nothing to average) as JSON null."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_none(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_nan_to_none(v) for v in x]
    return x
