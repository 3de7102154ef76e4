"""``animal-reid``: the top-level command dispatches to each command's module; help needs no extras."""

from __future__ import annotations

import subprocess
import sys

import pytest

from animal_reid.cli import COMMANDS, main, usage


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert f"  {name}" in out


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert capsys.readouterr().err.startswith("usage: animal-reid <command>")


@pytest.mark.parametrize("name", ["nope", "Serve", "--model"])
def test_unknown_command_is_one_line(capsys, name):
    assert main([name]) == 2
    err = capsys.readouterr().err
    assert err == f"error: unknown command {name!r}; the commands are {', '.join(COMMANDS)}\n"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_command_has_help(name):
    """``animal-reid <command> --help`` in a fresh interpreter: exit 0, its own usage line."""
    proc = subprocess.run(
        [sys.executable, "-m", "animal_reid.cli", name, "--help"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and "--" in proc.stdout


def test_usage_is_stable():
    assert usage().splitlines()[0] == "usage: animal-reid <command> [options]"
