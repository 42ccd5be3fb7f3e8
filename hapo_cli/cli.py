"""The `hapo` command line: a thin Typer shell over one function per command.

Every command takes raw Hydra overrides (key=value) after its options. Conventions: results
(tables) go to stdout, progress and logs to stderr; every error is one line and exit code 2.
"""

from __future__ import annotations

import os
import sys

import typer

from hapo_cli.errors import HapoError

app = typer.Typer(
    name="hapo",
    help="Token-aware RL for LLM reasoning: DAPO baselines, HAPO (components A-D), ablations, math evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        import hapo_cli

        typer.echo(f"hapo {hapo_cli.__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                 help="Print the version and exit."),
) -> None:
    if debug:
        os.environ["HAPO_DEBUG"] = "1"


# ---- command registration (each command lives next to the code it drives) ----
from hapo_cli.train.command import train_command  # noqa: E402

app.command("train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(train_command)
from hapo_cli.evaluate.command import eval_command  # noqa: E402

app.command("eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(eval_command)
from hapo_cli.sweep.command import ablate_command  # noqa: E402

app.command("ablate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(ablate_command)
from hapo_cli.report.command import analyze_command, report_command  # noqa: E402

app.command("report")(report_command)
app.command("analyze")(analyze_command)


# Hydra habits that `hapo` does differently: (command or None for any, argument test, pointer)
_HYDRA_HABITS = [
    ("train", lambda a: a in ("-m", "--multirun"),
     "-m/--multirun is Hydra's sweeper; grids of runs are `hapo ablate` here (e.g. hapo ablate --components A,B "
     "--seeds 3), and one run is `hapo train key=value ...`"),
    (None, lambda a: a == "--cfg" or a.startswith("--cfg="),
     "--cfg is Hydra's; the composed config is `hapo train --show-config [overrides]` (every key: --help-config)"),
    (None, lambda a: a.startswith(("hydra.run.dir=", "hydra.sweep.dir=", "+hydra.run.dir=")),
     "the run folder is `run_dir=PATH` (or output_dir=/run_name=); hapo sets no hydra.* keys"),
    (None, lambda a: a.lstrip("+~").startswith("hydra."),
     "hapo takes no hydra.* overrides: run folders are run_dir=PATH, logging is logger=..."),
]


def hydra_habit(argv: list[str]) -> str | None:
    """The one-line pointer for a Hydra habit in `argv` (the arguments after `hapo`), else None."""
    command = next((a for a in argv if not a.startswith("-")), None)
    for where, matches, pointer in _HYDRA_HABITS:
        if where in (None, command) and any(matches(a) for a in argv[1:] if command):
            return pointer
    return None


_TYPE_NAMES = {"int": "INTEGER", "float": "FLOAT", "str": "TEXT", "bool": "BOOLEAN"}


def _click_type_name(display_type_rich):
    """Wrap typer's type column (`<int>`, `<list[str]>`) to write click's names (INTEGER, TEXT); flags get none."""
    def wrapped(self, ctx):
        if getattr(self, "is_flag", False):
            return None
        text = display_type_rich(self, ctx)
        if not isinstance(text, str) or not text.startswith("<"):
            return text
        bare = text.strip("<>.").removeprefix("list[").removesuffix("]")
        return _TYPE_NAMES.get(bare, bare.upper())
    return wrapped


def _ecosystem_type_names() -> None:
    """Type hints in help as the ecosystem (click) writes them, for every option and argument."""
    from typer.core import TyperArgument, TyperOption

    for cls in (TyperOption, TyperArgument):
        if not getattr(cls.display_type_rich, "_hapo", False):
            cls.display_type_rich = _click_type_name(cls.display_type_rich)
            cls.display_type_rich._hapo = True


def _upper_argument_names(command) -> None:
    for sub in getattr(command, "commands", {}).values():
        _upper_argument_names(sub)
    for param in getattr(command, "params", []):
        if type(param).__name__ == "TyperArgument" and param.metavar is None:
            param.metavar = param.name.upper()  # the usage line adds "..."


def build_command():
    """The click command of the app, with the help conventions above applied."""
    _ecosystem_type_names()
    command = typer.main.get_command(app)
    _upper_argument_names(command)
    return command


def die_with_parent() -> None:
    """Started by `hapo ablate` (HAPO_PARENT_PID set): be killed when that process dies, even by
    kill -9 (Linux PR_SET_PDEATHSIG; elsewhere a no-op). The unfinished step leaves no record, the
    run lock is released by the kernel, and re-running the sweep resumes the run."""
    parent = os.environ.pop("HAPO_PARENT_PID", None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() != int(parent):  # the sweep died before prctl took effect
        os._exit(1)


def main() -> None:
    """Console entry point: run the app; HapoError and usage errors become one clear line."""
    die_with_parent()
    from typer._click.exceptions import ClickException  # typer vendors its own click

    habit = hydra_habit(sys.argv[1:])
    if habit:
        typer.secho(f"error: {habit}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    try:
        rc = build_command().main(args=sys.argv[1:], prog_name="hapo", standalone_mode=False)
    except HapoError as err:
        if os.environ.get("HAPO_DEBUG"):
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except ClickException as err:  # usage errors: bad option, missing value
        err.show()
        sys.exit(err.exit_code)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    # with standalone_mode=False, click returns the code of typer.Exit(n) instead of raising it
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":
    main()
