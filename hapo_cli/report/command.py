"""`hapo report DIR...`: plots (PNG) and the results table (Markdown, CSV) of runs and sweeps.

    hapo report runs/sweeps/paper                  # a sweep: one line a variant, bands over seeds
    hapo report runs/dapo-x runs/hapo-x            # runs (configs equal but for seed: one variant)
    hapo report runs/sweeps --out figures/         # every sweep in a folder
"""

from __future__ import annotations

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
    Figures (PNG, one line a variant: mean over seeds with a min-max band):
      val_accuracy.png       validation accuracy (the runs' val_metric, e.g. avg@k) over steps
      entropy.png            mean token entropy of the rollouts
      response_length.png    mean response length
      reward.png             mean training reward
      clip_fractions.png     left / right clip fractions, all tokens and by entropy sign
      training_dynamics.png  the six training curves on one page
      clip_by_entropy.png    which tokens hit which clip bound (h <= 0 vs h > 0)
      token_entropy.png      token entropy of correct vs wrong responses (saved rollouts)
    Tables: results.md (printed), results.csv (one line a variant), runs.csv (one line a run);
    the same table as `hapo ablate` prints for a sweep.
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
    if not no_plots:
        from hapo_cli.report.plots import all_plots

        written += all_plots(col, out_dir, smooth=smooth)
    n_runs = sum(len(v.runs) for v in col.variants)
    print(f"hapo report: {len(col.variants)} variants, {n_runs} runs -> {out_dir}", file=sys.stderr)
    for p in written:
        print(f"  {p}", file=sys.stderr)
