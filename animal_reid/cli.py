"""``animal-reid``: the one command-line home, a subcommand per job.

``animal-reid <command> [options]``; ``animal-reid --help`` lists the commands and ``animal-reid <command> --help``
their options. Each command lives in its own module with a ``main(argv) -> int`` and imports its extras only when
it runs, so ``--help`` (and commands that need no extra) work on the base install. Errors are one ``error:``
line on stderr: exit 2 for bad arguments, 1 for failures.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: command -> (module with ``main(argv) -> int``, the argv prefix that module expects, one-line help)
COMMANDS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "serve": ("animal_reid.serve.cli", ("serve",), "serve a model and a catalogue over HTTP"),
    "catalogue": ("animal_reid.serve.catalogue_cli", (), "back up, restore or calibrate a served catalogue"),
    "identify": ("animal_reid.identify.cli", (), "match query photos against a gallery of known individuals"),
    "ingest": (
        "animal_reid.season.ingest_cli",
        (),
        "read a season's photos (folder with EXIF, MegaDetector JSON, COCO, CSV, Camtrap DP) into one annotation table",
    ),
    "calibrate": (
        "animal_reid.season.calibrate_cli",
        (),
        "fit per-species decision bands (known / unsure / new) on a labelled catalogue",
    ),
    "season": (
        "animal_reid.season.season_cli",
        (),
        "a season's photos against a catalogue: decisions, proposed new individuals, exports and a report",
    ),
}


class UsageError(ValueError):
    """A bad option, path or input of a command; the message is the one line to show (exit 2)."""


class UsageParser(argparse.ArgumentParser):
    """A command's argument parser whose errors raise :class:`UsageError` (``"<problem> (see --help)"``)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see --help)")


def register(name: str, module: str, help_text: str, prefix: Sequence[str] = ()) -> None:
    """Add a command (used by the table above; also for plug-ins)."""
    COMMANDS[name] = (module, tuple(prefix), help_text)


def usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: animal-reid <command> [options]", "", "Animal re-identification tools.", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_text}" for name, (_, _, help_text) in COMMANDS.items()]
    lines += ["", "`animal-reid <command> --help` shows a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``animal-reid`` with ``argv`` (default: the command line); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}; the commands are {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module, prefix, _ = COMMANDS[name]
    status = importlib.import_module(module).main([*prefix, *rest])
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
