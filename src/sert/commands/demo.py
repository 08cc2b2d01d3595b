"""``sert demo``: the packaged CPU-sized experiment, end to end (library: :func:`sert.pipeline.run_experiment`)."""
from __future__ import annotations

import argparse

from ..pipeline import packaged_config
from .run import run_and_print


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="a CPU-sized SERT experiment on the embedded model, end to end (~10 min on 2 cores)",
                       description="Runs the packaged demo config (all five arms on StrategyQA with the embedded "
                                   "SmolLM2-135M) and writes a full report. Resumable.")
    d.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/demo)")
    d.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", help="override a config key")
    d.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train every arm once per seed (= --set train.seeds=[...])")
    d.add_argument("--quiet", action="store_true", help="no progress lines")
    d.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    return run_and_print(packaged_config("demo"), args)
