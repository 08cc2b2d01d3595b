"""The ``sert`` command: parse, configure logging (:mod:`sert.log`: ``-q``/``-v``), call the library, print.

The sub-commands live in :mod:`sert.commands` (one module per command, named after it, on top
of the library; no stage module imports the command layer). Heavy imports (torch, transformers)
happen inside the library functions that need them, so ``sert --help`` is instant. A :class:`~sert.errors.SertError`
becomes one line on stderr and its exit status (2, or 1 for faults that are not the user's);
so does a fault of the environment (:func:`sert.errors.environment_error`: a full disk, a
permission, a corrupt file, ...), never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .commands import COMMAND_MODULES, OneLineParser
from .errors import SertError, environment_error
from .log import configure as configure_logging
from .log import restore as restore_logging
from .version import __version__

__all__ = ["OneLineParser", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="sert", description="Self-Enhanced Reasoning Training (SERT) for small causal LMs.")
    p.add_argument("--version", action="version", version=f"sert {__version__}")
    p.add_argument("-q", "--quiet", dest="log_quiet", action="store_true",
                   help="only warnings and errors (a command's own --quiet also hides its progress bars)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug lines too")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"sert.commands.{name}").add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = configure_logging(-1 if args.log_quiet or getattr(args, "quiet", False) else 1 if args.verbose else 0)
    try:
        return _run(args)
    finally:
        restore_logging(level)


def _run(args: argparse.Namespace) -> int:
    """The command, with every error it may end in as one line and its exit status."""
    try:
        rc = args.func(args)
        return int(rc or 0)
    except SertError as e:
        print(f"sert: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        print("sert: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `sert configs | head`: the reader left; no traceback
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the interpreter's final flush too
        return 0
    except Exception as e:  # noqa: BLE001 - an environment fault is one line; anything else keeps its traceback
        err = environment_error(e)
        if err is None:
            raise
        print(f"sert: error: {err}", file=sys.stderr)
        return err.status
