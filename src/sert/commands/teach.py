"""``sert teach``: teacher rationales for distillation (library: :func:`sert.teach.run_teach`)."""
from __future__ import annotations

import argparse

from .. import teach
from ..config import TeachConfig
from ..teach import run_teach
from . import add_config_flags, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("teach", help="collect teacher rationales for distillation (SERT §II-C)",
                       description=teach.__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, metavar="TASK",
                   help="task name (e.g. strategyqa, commonsense_qa) or a data file")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for rationales.jsonl and teach_summary.json")
    p.add_argument("--split", default="train", choices=("train", "test"))
    add_config_flags(p, TeachConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TeachConfig, args, section="teach")
    print(run_teach(args.task, cfg, args.out, split=args.split))
    return 0
