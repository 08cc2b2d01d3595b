"""The command-line layer: one module per ``sert`` sub-command, on top of the library.

Each module here is named after its command (``sert eval``: ``eval.py``) and has
``add_parser(subparsers)`` and ``run(args)``: parse, call the stage's library API
(``sert.mine.run_mine``, ``sert.filters.run_filter``, ...), print. No stage module imports this
package. The stage modules import torch and transformers only inside the functions that need them,
so importing them here keeps ``sert --help`` instant. The flags of a config dataclass come from its
fields: name, type (metavar) and help (the field's metadata: meaning, paper value or our decision).
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from ..config import RunConfig, _yaml_kind, from_dict, load_yaml
from ..errors import SertError

# One module per sub-command, named after it; `sert --help` lists them in this order (the SERT stages first).
COMMAND_MODULES = ["mine", "filter", "teach", "train", "eval", "tasks", "judge", "run", "demo", "configs", "report",
                   "bench"]


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line, exit status 2."""

    def error(self, message: str):  # noqa: D401
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def add_model_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("--model", default=None if required else "smollm2-135m", required=required, metavar="MODEL",
                   help="Hugging Face causal-LM id or local path, or 'smollm2-135m' (embedded default)")
    p.add_argument("--device", default="auto", metavar="DEVICE",
                   help="auto | cpu | cuda | cuda:N (auto: CUDA if available)")
    p.add_argument("--dtype", default="auto", metavar="DTYPE",
                   help="auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA; on a CPU bf16 only where it has bf16 "
                        "matrix units and a probe measures bf16 faster, else fp32; the choice and why are printed)")


_METAVARS = {int: "N", float: "X", bool: "true|false", str: "TEXT"}


def metavar(tp) -> str:
    """A readable placeholder for a field of type ``tp``: N, X, true|false, TEXT; ``N|auto`` for ``int | str``."""
    if typing.get_origin(tp) is list:
        return metavar(typing.get_args(tp)[0])
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if args:
        return "|".join("auto" if a is str and len(args) > 1 else metavar(a) for a in args)
    return _METAVARS.get(tp, "VALUE")


def add_config_flags(p: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field of the config dataclass ``cls``: the field's help (what it means, the
    paper's value (S) or our decision (D)) and its default; parsed as strings, typed by the config."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = ("none" if default is None else str(default).lower() if isinstance(default, bool)
                 else " ".join(map(str, default)) if isinstance(default, list) else default)
        text = f"{f.metadata.get('help', '')}  [default: {shown}]".strip().replace("%", "%%")
        nargs = "+" if isinstance(default, list) else None
        p.add_argument("--" + f.name.replace("_", "-"), dest=f"cfg_{f.name}", nargs=nargs, default=None,
                       metavar=metavar(hints[f.name]), help=text)
    p.add_argument("--config", default=None, metavar="YAML", help="YAML file with these keys (flags override it)")


def config_from_args(cls, args: argparse.Namespace, section: str | None = None):
    """Defaults < YAML (``--config``, its ``section`` if given) < flags; validated, all errors at once."""
    data: dict = {}
    if getattr(args, "config", None):
        y = load_yaml(args.config)
        run_keys = {f.name for f in dataclasses.fields(RunConfig)} - {f.name for f in dataclasses.fields(cls)}
        data = y.get(section) if section and section in y else {} if section and set(y) & run_keys else y
        if not isinstance(data, dict):  # `train:` left empty, or `train: [1, 2]`: as sert run says it
            raise SertError(f"{args.config}: {section}: expected a mapping of its keys, got {_yaml_kind(data)}")
        data = dict(data)
    for k, v in vars(args).items():
        if k.startswith("cfg_") and v is not None:
            data[k[4:]] = None if v in ("none", "null", "None") else v
    return from_dict(cls, data, source=getattr(args, "config", None) or "options")
