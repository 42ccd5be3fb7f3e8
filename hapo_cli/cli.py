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


def main() -> None:
    """Console entry point: run the app and turn HapoError into one clear line."""
    try:
        app(standalone_mode=False)
    except HapoError as err:
        if os.environ.get("HAPO_DEBUG"):
            raise
        typer.secho(f"error: {err}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as err:  # click usage errors and the like
        import click

        if isinstance(err, click.ClickException):
            err.show()
            sys.exit(err.exit_code)
        raise


if __name__ == "__main__":
    main()
