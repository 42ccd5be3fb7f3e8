"""The `hapo` command line: a thin Typer shell over one function per command.

Every command takes raw Hydra overrides (key=value) after its options.
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


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
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


def main() -> None:
    """Console entry point: run the app; HapoError and usage errors become one clear line."""
    from typer._click.exceptions import ClickException  # typer vendors its own click

    try:
        rc = app(standalone_mode=False)
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
