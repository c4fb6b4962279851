"""`flairlab` command line: one sub-command per stage, each defined next to the code it runs.

Every module listed in COMMANDS exposes `add_cli(subparsers)`, which registers its sub-command
and sets `func` (called with the parsed args; returns an exit code). Only the module of the
command being run is imported, so `flairlab run` does not pay for torch and `--help` is fast.

Bad input (a `DataError`: a file, field or value that is not what was expected) ends the command
with one line on stderr naming it, and exit code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module that registers it, one-line help shown by `flairlab --help`)
COMMANDS: dict[str, tuple[str, str]] = {
    "sample": ("flairlab.data.sample", "write the synthetic FLAIR-HUB sample (exact format)"),
    "check": ("flairlab.data.check", "validate a FLAIR-HUB folder (exit 1 on any problem)"),
    "pack": ("flairlab.data.pack", "pack a FLAIR-HUB folder into a training store (Zarr v3)"),
    "stats": ("flairlab.explore.bandgroups", "band statistics, correlations, band groups"),
    "pretrain": ("flairlab.training.pretrain", "pre-train the MAESTRO masked autoencoder"),
    "finetune": ("flairlab.training.finetune", "probe / fine-tune / from scratch, then evaluate"),
    "predict": ("flairlab.maps.predict", "predict patches / zones and write COGs (+ HTML maps)"),
    "run": ("flairlab.runs.runner", "run a notebook pipeline with papermill into runs/"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Parser with every command listed; only `command`'s module is imported and registered."""
    parser = argparse.ArgumentParser(prog="flairlab", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks of input errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        if name == command:
            importlib.import_module(module).add_cli(sub)
            sub.choices[name].add_argument(
                "--debug", action="store_true", default=argparse.SUPPRESS,
                help="show the traceback of an input error instead of one line",
            )  # fmt: skip
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    from flairlab.data.errors import DataError

    try:
        return int(args.func(args) or 0)
    except DataError as err:
        if args.debug:
            raise
        print(f"flairlab {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
