"""`hapo ablate`: a grid of HAPO components on top of DAPO, each variant x seed a `hapo train` run.

    hapo ablate --components A,B [--mode grid|add-one|leave-one-out|single] [--include-baseline]
                [--seeds N] [--sweep-dir DIR] [--name NAME] [--parallel N] [--dry-run] [--force]
                [OVERRIDES...]
    hapo ablate --spec ablations/paper.yaml [--seeds N] ... [OVERRIDES...]

Runs go to <sweep dir>/<variant>-seed<S>/ (default sweep dir runs/sweeps/<name>), all in the W&B
group <name>; sweep.json keeps the plan and each run's status. The same command again skips
finished runs, resumes interrupted ones and retries failed ones. At the end: results.md,
results.csv and runs.csv in the sweep folder, the table printed; exit 1 if a run failed.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path

import typer

from hapo_cli.errors import HapoError
from hapo_cli.runs import sweep as st
from hapo_cli.sweep import plan as pl

_HELP = """Run an ablation sweep: DAPO plus subsets of HAPO's components (A ATS, B TLGA, C DAR, D AAC).

Each variant x seed is a normal `hapo train` run with `algorithm=dapo` (or a spec row's algorithm preset) and the component switches, so every variant shares the same base hyperparameters. Extra arguments are Hydra overrides for every run (e.g. experiment=hapo_qwen2.5_math_7b trainer.total_steps=100).

\b
Modes over --components (default grid):
  grid           every subset: A,B -> DAPO, DAPO+A, DAPO+B, DAPO+A+B
  add-one        DAPO and DAPO + each component
  leave-one-out  all named components, and all minus each (Δ vs the full row)
  single         the named combination (plus DAPO with --include-baseline)

Or --spec FILE with explicit rows: ablations/paper.yaml (the paper's ablation rows), paper_main.yaml (its main table), ats_temperature.yaml, leave_one_out.yaml.

Runs: <sweep dir>/<variant>-seed<S>/ with train.log; sweep.json holds the plan and statuses. Running the same command again skips finished runs, resumes interrupted ones and retries failed ones. The table of final validation metrics (mean ± std over seeds, Δ vs DAPO) is printed and saved as results.md / results.csv; a failed run is listed and the exit code is 1."""


def _seeds(text: str) -> list[int]:
    t = text.strip()
    try:
        if "," in t:
            seeds = [int(x) for x in t.split(",") if x.strip()]
        else:
            n = int(t)
            if n < 1:
                raise HapoError(f"--seeds must be >= 1 (got {n})")
            seeds = list(range(n))
    except ValueError:
        raise HapoError(f"--seeds takes a count (3 -> seeds 0,1,2) or a list (0,5,7); got {text!r}") from None
    if len(set(seeds)) != len(seeds) or not seeds:
        raise HapoError(f"--seeds lists a seed twice or none: {text!r}")
    return seeds


def build_plan(components: str | None, mode: str | None, spec: str | None, include_baseline: bool,
               seeds: list[int], base: list[str], name: str | None):
    """(name, variants, runs, reference_label) from the command's options."""
    pl.check_overrides(base, "command line")
    if spec and components:
        raise HapoError("give --components (with --mode) or --spec, not both")
    if spec:
        if mode is not None or include_baseline:
            raise HapoError("--mode and --include-baseline apply to --components; a --spec file lists its rows")
        sp = pl.load_spec(spec)
        variants, shared, stem, label = sp.variants, sp.overrides, sp.name, sp.reference_label
    else:
        if not components:
            raise HapoError("name the components to ablate (--components A,B) or give a spec (--spec ablations/paper.yaml)")
        letters = pl.parse_components(components)
        mode = mode or "grid"
        if include_baseline and mode != "single":
            raise HapoError(f"--include-baseline applies to --mode single ({mode} decides its own rows)")
        variants, shared, label = pl.mode_variants(letters, mode, include_baseline), [], None
        stem = f"{mode}-{''.join(letters)}"
    name = name or pl.default_sweep_name(stem, base)
    if not re.fullmatch(r"[A-Za-z0-9+._-]+", name):
        raise HapoError(f"--name {name!r}: use letters, digits and + . _ - (it names the folder and the W&B group)")
    runs = pl.plan_runs(variants, seeds, shared + base, group=name)
    return name, variants, runs, label


def _validate_runs(runs: list[pl.PlannedRun]) -> None:
    """Compose every variant's config once (seed does not change validity): typos fail before any run."""
    from hapo_cli.config import compose_config

    seen = set()
    for r in runs:
        if r.variant in seen:
            continue
        seen.add(r.variant)
        try:
            compose_config([*r.overrides, "run_dir=/validation/only"])
        except HapoError as err:
            raise HapoError(f"variant {r.variant}: {err}") from None


def ablate_command(
    ctx: typer.Context,
    overrides: list[str] = typer.Argument(None, help="Hydra overrides for every run, e.g. experiment=debug trainer.total_steps=20"),
    components: str = typer.Option(None, "--components", "-c", help="Components to ablate, comma-separated: A,B,C,D (or ats,tlga,dar,aac)."),
    mode: str = typer.Option(None, "--mode", "-m", help="grid (default): every subset; add-one; leave-one-out; single."),
    include_baseline: bool = typer.Option(False, "--include-baseline", help="With --mode single: also run the DAPO baseline."),
    spec: str = typer.Option(None, "--spec", "-s", help="Spec file with explicit rows (ablations/paper.yaml, ablations/leave_one_out.yaml)."),
    seeds: str = typer.Option("1", "--seeds", "-n", help="Seeds per variant: a count (3 -> seeds 0,1,2) or a list (0,5,7)."),
    sweep_dir: str = typer.Option(None, "--sweep-dir", "-o", help="Sweep folder (default runs/sweeps/<name>); the same folder resumes."),
    name: str = typer.Option(None, "--name", help="Sweep name and W&B group (default <mode>-<letters>, or the spec's name; "
                             "plus -<experiment> when experiment= is given)."),
    parallel: int = typer.Option(1, "--parallel", "-j", help="Runs at a time (default 1). Each run is a whole training "
                                 "process: N runs need N times the memory and cores (or GPUs)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the planned runs (name, seed, run_dir, overrides) and exit."),
    force: bool = typer.Option(False, "--force", help="Re-plan a sweep whose saved plan differs: changed runs start "
                               "again (their old folders move to <sweep dir>/replaced/)."),
) -> None:
    base = list(overrides or []) + list(ctx.args)
    if parallel < 1:
        raise HapoError(f"--parallel must be >= 1 (got {parallel})")
    name, variants, runs, label = build_plan(components, mode, spec, include_baseline, _seeds(seeds), base, name)
    sdir = Path(sweep_dir) if sweep_dir else Path("runs") / "sweeps" / name
    _validate_runs(runs)
    saved = st.load_state(sdir)
    planned = [r.as_dict() for r in runs]
    diffs = st.plan_difference(saved, planned) if saved else []
    if dry_run:
        _print_plan(name, sdir, runs, saved)
        if diffs:
            typer.echo(f"note: the plan differs from {sdir / st.STATE_FILE}: {'; '.join(diffs)} (a real run needs --force)")
        return
    if diffs and not force:
        raise HapoError(f"the plan differs from the one saved in {sdir / st.STATE_FILE}: {'; '.join(diffs)}. "
                        "Run the same command as before, choose another --sweep-dir, or add --force to re-plan")
    state = _merge_state(sdir, name, variants, planned, saved, label, force)
    sdir.mkdir(parents=True, exist_ok=True)
    st.save_state(sdir, state)
    _echo(f"hapo ablate: {len(variants)} variants x {len(runs) // max(1, len(variants))} seeds = {len(runs)} runs "
         f"in {sdir} (W&B group {name}, {parallel} at a time)")
    from hapo_cli.sweep.runner import SweepRunner

    runner = SweepRunner(sdir, state, parallel=parallel, echo=_echo)
    try:
        runner.run_all()
    except KeyboardInterrupt:
        _echo(f"interrupted: run the same command again to continue (state in {sdir / st.STATE_FILE})")
        sys.exit(130)  # not typer.Exit: the CLI runs click with standalone_mode=False, which returns its code
    failed = finish(sdir)
    if failed:
        _echo(f"{failed} run(s) failed (listed above; logs in each run's train.log). "
             "Run the same command again to retry them.")
        sys.exit(1)


def finish(sdir: Path) -> int:
    """Write and print the sweep's table; returns the number of failed runs."""
    from hapo_cli.report.collect import load_sweep
    from hapo_cli.report.table import write_tables

    col = load_sweep(sdir)
    md = write_tables(col, sdir)
    typer.echo("\n" + md)
    _echo(f"tables: {sdir / 'results.md'}, {sdir / 'results.csv'}, {sdir / 'runs.csv'}; plots: hapo report {sdir}")
    return sum(1 for v in col.variants for r in v.runs if r.status == st.FAILED)


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _merge_state(sdir: Path, name: str, variants: list[pl.Variant], planned: list[dict], saved: dict | None,
                 label: str | None, force: bool) -> dict:
    """The new state: the plan, with the history of unchanged runs kept (changed ones moved away)."""
    old = {r["id"]: r for r in (saved or {}).get("runs", [])}
    runs = []
    for r in planned:
        o = old.get(r["id"])
        if o is not None and o["overrides"] == r["overrides"]:
            keep = {k: v for k, v in o.items() if k not in r}
            runs.append({**keep, **r})
            continue
        rd = sdir / r["id"]
        if o is not None and force and rd.exists():
            dest = sdir / "replaced" / f"{r['id']}-{time.strftime('%Y%m%d-%H%M%S')}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(rd), str(dest))
            _echo(f"{r['id']}: overrides changed, old folder moved to {dest}")
        elif o is None and rd.exists() and st.run_files_status(rd) != st.PENDING:
            raise HapoError(f"{rd} already holds a run that {st.STATE_FILE} does not know; move it away or choose another --sweep-dir")
        runs.append({**r, "status": st.PENDING, "attempts": 0})
    return {
        "version": st.VERSION,
        "name": name,
        "created": (saved or {}).get("created", st.now()),
        "argv": ["hapo", *sys.argv[1:]],
        "reference_label": label,
        "variants": [v.as_dict() for v in variants],
        "runs": runs,
    }


def _print_plan(name: str, sdir: Path, runs: list[pl.PlannedRun], saved: dict | None) -> None:
    from hapo_cli.sweep.runner import train_args

    typer.echo(f"sweep {name}: {len(runs)} runs in {sdir} (W&B group {name})")
    for i, r in enumerate(runs, 1):
        rd = sdir / r.id
        status = st.run_files_status(rd) if saved else st.PENDING
        what = {st.DONE: "finished, will be skipped", st.INTERRUPTED: "will resume",
                st.PENDING: "will run"}[status]
        typer.echo(f"[{i}/{len(runs)}] {r.id}  variant={r.variant} seed={r.seed} run_dir={rd}  ({what})")
        typer.echo("    hapo " + " ".join(train_args(sdir, r.overrides, r.id, status == st.INTERRUPTED)))


ablate_command.__doc__ = _HELP
