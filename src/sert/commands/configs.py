"""``sert configs``: the shipped configs, listed or printed (library: :func:`sert.pipeline.shipped_configs`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SertError
from ..pipeline import packaged_config, shipped_configs


def add_parser(sub) -> None:
    c = sub.add_parser("configs", help="list the configs shipped with sert, or print one (to copy and edit)",
                       description="'sert configs' lists the shipped configs (paper settings and CPU sizes); "
                                   "'sert configs show NAME > my.yaml' copies one to edit; 'sert run NAME' runs one.")
    c.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    c.add_argument("name", nargs="?", help="with show: the config's name, e.g. paper/strategyqa_gpt2")
    c.set_defaults(func=run)


def first_comment(path: Path) -> str:
    """The first non-empty comment line of a config: its one-line description."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.strip("# "):
            return line.strip("# ")
    return ""


def run(args: argparse.Namespace) -> int:
    if args.action == "show":
        if not args.name:
            raise SertError("sert configs show: expected a config name, e.g. paper/strategyqa_gpt2 "
                            "(see 'sert configs')")
        sys.stdout.write(packaged_config(args.name).read_text(encoding="utf-8"))
        return 0
    if args.name:
        raise SertError(f"sert configs: unexpected {args.name!r}; did you mean 'sert configs show {args.name}'?")
    shipped = shipped_configs()
    width = max(len(n) for n in shipped)
    for name, path in shipped.items():
        print(f"{name:<{width}}  {first_comment(path)}")
    print("\nsert run NAME runs one; sert configs show NAME > my.yaml copies one to edit (then: sert run my.yaml)")
    return 0
