"""`hapo train [OVERRIDES...]`: compose the Hydra config, validate it, train with a progress bar."""

from __future__ import annotations

import sys

import typer

from hapo_cli.config import GROUPS, compose_config, group_options


def _help() -> str:
    paragraphs = [
        "Train a DAPO baseline or a HAPO variant. Arguments are Hydra overrides (key=value).",
        "Examples: `hapo train` (built-in tiny model, CPU, minutes); `hapo train algorithm=dapo`; "
        "`hapo train algorithm=dapo algorithm.components.B=true` (DAPO + TLGA); "
        "`hapo train run_dir=runs/x resume=true` (continue a run).",
        "Components (algorithm.components.<letter> or .<name>): A/ats Adaptive Temperature Sampling, "
        "B/tlga Token-Level Group Average, C/dar Differential Advantage Redistribution, D/aac Asymmetric Adaptive Clipping.",
    ]
    groups = ["\b", "Config groups (group=option):"]  # \b: click keeps these lines as they are
    try:
        for g in GROUPS:
            groups.append(f"  {g}: {', '.join(group_options(g)) or '-'}")
    except Exception:  # noqa: BLE001 - help must render even without conf/
        groups.append("  (conf/ not found)")
    tail = "Every key, its default and meaning: `hapo train --help-config`; the composed config: `--show-config`."
    return "\n\n".join([*paragraphs, "\n".join(groups), tail])


def train_command(
    ctx: typer.Context,
    overrides: list[str] = typer.Argument(None, help="Hydra overrides, e.g. algorithm=dapo trainer.total_steps=20"),
    show_config: bool = typer.Option(False, "--show-config", help="Print the composed config and exit."),
    help_config: bool = typer.Option(False, "--help-config", help="Print every config key with its default and meaning, and exit."),
) -> None:
    if help_config:
        from hapo_cli.config import format_field_docs

        typer.echo(format_field_docs())
        return
    overrides = list(overrides or []) + list(ctx.args)
    cfg, raw = compose_config(overrides)
    if show_config:
        from omegaconf import OmegaConf

        typer.echo(OmegaConf.to_yaml(raw))
        return
    from hapo_cli.preflight import preflight

    preflight(cfg)  # device, engine, GPU presets, W&B credentials, Hub reachability: before any model loads
    from hapo_cli.train.interrupt import Interrupted
    from hapo_cli.train.trainer import train

    try:
        summary = train(cfg, raw, argv=sys.argv)
    except Interrupted as stop:
        typer.echo(str(stop), err=True)
        raise typer.Exit(stop.exit_code) from None
    if summary is not None and summary.get("run_dir"):
        print_summary(summary)


train_command.__doc__ = _help()


def print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def f(x, spec=".3f"):
        return "-" if x is None else format(x, spec)

    key = s.get("val_metric") or "val"
    table = Table(title=f"hapo train: {s['algorithm']} (components {s['components']})")
    table.add_column("")
    table.add_column("warm start / first", justify="right")
    table.add_column("final", justify="right")
    table.add_row(f"validation {key.removeprefix('val/')}", f(s.get("val_start")), f(s.get("val_final")))
    table.add_row("train reward", f(s.get("reward_first")), f(s.get("reward_last")))
    table.add_row("token entropy", f(s.get("entropy_first")), f(s.get("entropy_last")))
    table.add_row("steps", "0", str(s["steps"]))
    total = s.get("train_seconds_total")
    spent = f"{s['seconds']:.0f} s" if total is None or total <= s["seconds"] + 1 else f"{s['seconds']:.0f} s (all segments: {total:.0f} s of steps)"
    table.add_row("time", "", spent)
    Console().print(table)  # results on stdout; progress and logs went to stderr
    Console().print(f"run directory: {s['run_dir']}")
