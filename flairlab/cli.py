"""`flairlab` command line: one sub-command per stage, each defined next to the code it runs.

Every module listed in COMMANDS exposes `add_cli(subparsers)`, which registers its sub-command(s)
and sets `func` (called with the parsed args; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module (under flairlab.) that registers each sub-command; imported lazily so `--help` stays fast
COMMANDS: dict[str, str] = {
    "check": "flairlab.check",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flairlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in dict.fromkeys(COMMANDS.values()):
        importlib.import_module(module).add_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
