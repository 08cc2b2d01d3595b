"""The configuration reference (docs/configuration.md), generated from the config dataclasses.

    python3 -m sert.tools.configref > docs/configuration.md

Every setting of every stage with its type, default and help (meaning; (S) the paper's value, (D) our
decision), as ``sert <command> --help`` shows it and a YAML config or ``--set`` takes it.
tests/test_docs.py fails when the file and the code disagree.
"""
from __future__ import annotations

import dataclasses
import typing

from ..config import (ArmConfig, EvalConfig, FilterConfig, JudgeConfig, MineConfig, RunConfig, TeachConfig,
                      TrainConfig, field_help)

SECTIONS = [("", RunConfig, "sert run"), ("mine", MineConfig, "sert mine"), ("filter", FilterConfig, "sert filter"),
            ("train", TrainConfig, "sert train"), ("teach", TeachConfig, "sert teach"), ("eval", EvalConfig, "sert eval"),
            ("judge", JudgeConfig, "sert judge"), ("arm_specs[]", ArmConfig, "a config's arm_specs")]


def _type(tp) -> str:
    """A readable type: int, float, bool, str, list of ..., with "or null" for an optional one."""
    names = {int: "int", float: "float", bool: "bool", str: "str", dict: "mapping"}
    if typing.get_origin(tp) is list:
        return f"list of {_type(typing.get_args(tp)[0])}"
    args = typing.get_args(tp)
    if args and typing.get_origin(tp) is not dict:
        inner = [_type(a) for a in args if a is not type(None)]
        return " or ".join(inner) + (" or null" if type(None) in args else "")
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return names.get(tp, getattr(tp, "__name__", str(tp)))


def _default(f: dataclasses.Field) -> str:
    v = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    if dataclasses.is_dataclass(v):
        return "(section)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return str(v)


def _cell(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def reference() -> str:
    out = ["# Configuration reference", "",
           "Generated from `src/sert/config.py` by `python3 -m sert.tools.configref` (the test suite checks it is current).",
           "Precedence: these defaults < a YAML config < command-line flags (`--flag-name`) or `--set section.key=value`.",
           "(S): the value the SERT paper states; (D): our decision where it is silent (docs/METHOD.md).", ""]
    for section, cls, where in SECTIONS:
        hints = typing.get_type_hints(cls)
        title = f"`{section}`" if section else "top level"
        out += [f"## {title} ({where})", "", (cls.__doc__ or "").strip().split("\n")[0], "",
                "| key | type | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(hints[f.name]):
                continue
            key = f"{section}.{f.name}" if section and not section.endswith("[]") else f.name
            out.append(f"| `{key}` | {_cell(_type(hints[f.name]))} | `{_cell(_default(f))}` | "
                       f"{_cell(field_help(f))} |")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(reference(), end="")
