"""Command-line dispatcher: discovers commands, configures logging, turns UserError into one line.

Logging is configured here and nowhere else; library modules only call ``logging.getLogger``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from types import ModuleType

from pipeline.base.errors import UserError

PROG = "python -m pipeline"


def _command_modules() -> list[ModuleType]:
    import pipeline.commands as pkg

    mods = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name.startswith("_"):
            continue
        mods.append(importlib.import_module(f"pipeline.commands.{info.name}"))
    return mods


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line with exit code 2 (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Sentinel-2 land-cover mapping with SenCLIP (patch) and TimeSenCLIP (pixel).",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in _command_modules():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def configure_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    if verbose < 2:
        # distributed configures its own loggers from dask's config when first imported (here
        # and in spawned workers, which inherit the environment): quiet them at the source.
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
        for noisy in (
            "distributed",
            "rasterio",
            "urllib3",
            "numba",
            "matplotlib",
            "PIL",
            "numexpr",
            "pyogrio",  # "Created N records" for every GeoParquet/GeoPackage written
        ):
            logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
        # urllib3 warns on each retry it makes ("Retrying (...) NameResolutionError"); the
        # search retries on its own and ends with one line that says what failed.
        logging.getLogger("urllib3.connectionpool").setLevel(max(level, logging.ERROR))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    configure_logging(args.verbose, args.quiet)
    try:
        return int(args._run(args) or 0)
    except UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(
            "interrupted: run the same command again to resume (a run keeps its finished tiles)\n"
        )
        return 130
