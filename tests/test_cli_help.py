"""The CLI's conventions (issue 17, "Say what happened"): `hapo --version`, help that reads well at
80 columns with click's type names, and a one-line pointer for Hydra habits."""

from __future__ import annotations

import re

import pytest

from hapo_cli import __version__
from hapo_cli.cli import hydra_habit

COMMANDS = ["train", "eval", "ablate", "report", "analyze"]


def test_version(cli):
    res = cli("--version")
    assert res.returncode == 0 and res.stdout == f"hapo {__version__}\n"


@pytest.mark.parametrize("command", COMMANDS)
def test_help_at_80_columns_uses_ecosystem_type_names(cli, command):
    res = cli(command, "--help", env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert not re.search(r"<(int|str|float|bool|list\[str\])>", res.stdout), res.stdout
    if command in ("eval", "ablate", "analyze"):
        assert re.search(r"\bINTEGER\b", res.stdout) and re.search(r"\bTEXT\b", res.stdout)


@pytest.mark.parametrize("command", ["eval", "ablate", "report"])
def test_help_paragraphs_have_no_hard_breaks(cli, command):
    """A wrapped paragraph never leaves a short orphan line: the text outside the boxes is either a
    wrapped paragraph or an indented list row that fits."""
    res = cli(command, "--help", env={"COLUMNS": "80", "TERMINAL_WIDTH": "80"})
    text = res.stdout.split("╭")[0].splitlines()
    for prev, line in zip(text, text[1:]):
        # an orphan: a line starting at column 1 in lower case right after a list row (indented by 3)
        assert not (prev.startswith("   ") and line.startswith(" ") and not line.startswith("  ")
                    and line[1:2].islower()), f"{prev!r} / {line!r}"


@pytest.mark.parametrize("argv, pointer", [
    (["train", "-m", "algorithm=dapo,hapo"], "-m/--multirun is Hydra's sweeper; grids of runs are `hapo ablate`"),
    (["train", "--cfg", "job"], "--cfg is Hydra's; the composed config is `hapo train --show-config"),
    (["train", "hydra.run.dir=outputs/x"], "the run folder is `run_dir=PATH`"),
    (["ablate", "-c", "A", "hydra.job.chdir=true"], "hapo takes no hydra.* overrides"),
])
def test_hydra_habits_get_a_one_line_pointer(cli, argv, pointer):
    res = cli(*argv)
    assert res.returncode == 2
    assert res.stderr.startswith(f"error: {pointer}") and len(res.stderr.strip().splitlines()) == 1
    assert res.stdout == ""


def test_hydra_habit_does_not_catch_our_own_short_options():
    assert hydra_habit(["ablate", "-m", "grid", "-c", "A"]) is None  # ablate's --mode
    assert hydra_habit(["eval", "-m", "tiny"]) is None  # eval's --model
    assert hydra_habit(["train", "algorithm=dapo"]) is None


def test_hydra_parse_error_says_how_to_quote(cli):
    res = cli("train", "data.prompt_template={question}", "--show-config")
    assert res.returncode == 2
    assert res.stderr == ("error: cannot parse 'data.prompt_template={question}' (no viable alternative at input "
                          "'{question}'): quote the value for Hydra, and the whole argument for the shell: "
                          "\"data.prompt_template='{question}'\"\n")
    ok = cli("train", "data.prompt_template='{question}'", "--show-config")
    assert ok.returncode == 0 and "prompt_template: '{question}'" in ok.stdout
