"""The ``sert`` command: parse, call the library, print.

Each stage module owns its sub-command through ``add_parser(subparsers)``;
heavy imports (torch, transformers) happen inside the commands so ``sert --help``
is instant. A :class:`~sert.errors.SertError` becomes one line on stderr and exit 2.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import SertError

# Modules that contribute sub-commands, in the order of the SERT stages.
COMMAND_MODULES = ["mine", "filters", "teach", "train", "evaluate", "judge", "pipeline", "report", "bench"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, exit status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = OneLineParser(prog="sert", description="Self-Enhanced Reasoning Training (SERT) for small causal LMs.")
    p.add_argument("--version", action="version", version=f"sert {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=OneLineParser)
    for name in COMMAND_MODULES:
        try:
            mod = importlib.import_module(f"sert.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"sert.{name}":
                continue  # stage not built yet
            raise
        mod.add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        rc = args.func(args)
        return int(rc or 0)
    except SertError as e:
        print(f"sert: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sert: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


# ----------------------------------------------------------- shared flags
def add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", default=None if required else "smollm2-135m", required=required,
                   help="Hugging Face causal-LM id or local path, or 'smollm2-135m' (embedded default)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (auto: CUDA if available)")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA, fp32 on CPU)")


def add_config_flags(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per dataclass field (help text = its default); parsed as strings, typed by config."""
    import dataclasses

    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, list):
            p.add_argument(flag, dest=f"cfg_{f.name}", nargs="+", default=None, help=f"default: {default}")
        else:
            p.add_argument(flag, dest=f"cfg_{f.name}", default=None, help=f"default: {default}")
    p.add_argument("--config", default=None, help="YAML file with these keys (CLI flags override it)")


def config_from_args(cls, args: argparse.Namespace, section: str | None = None):
    """Defaults < YAML (``--config``, its ``section`` if given) < flags; validated, all errors at once."""
    from .config import from_dict, load_yaml

    data: dict = {}
    if getattr(args, "config", None):
        y = load_yaml(args.config)
        data = dict(y.get(section, {}) if section and section in y else y)
    for k, v in vars(args).items():
        if k.startswith("cfg_") and v is not None:
            data[k[4:]] = None if v in ("none", "null", "None") else v
    return from_dict(cls, data, source=getattr(args, "config", None) or "options")
