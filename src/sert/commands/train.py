"""``sert train``: self-training, distillation, fine-tuning (library: :func:`sert.train.run_train`)."""
from __future__ import annotations

import argparse

from .. import train
from ..config import TrainConfig
from ..train import run_train
from . import add_config_flags, add_model_args, config_from_args


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="self-train / distil / fine-tune a model (SERT §II-B, §II-C)",
                       description=train.__doc__.split("\n\n")[0])
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="DATA", action="append",
                   help="self: selected.jsonl (or its dir); distill: rationales.jsonl (or its dir); "
                        "finetune: a task name (train split) or JSONL/CSV with question, answer; "
                        "joint: --data selected.jsonl --data rationales.jsonl (their union, one training)")
    p.add_argument("--stage", required=True, choices=train.STAGES)
    p.add_argument("--out", required=True, metavar="DIR",
                   help="run directory: DIR/final, DIR/checkpoints, DIR/train_summary.json")
    p.add_argument("--resume", action="store_true",
                   help="continue from the last checkpoint in DIR/checkpoints (automatic when one exists)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="use only the first N records")
    add_config_flags(p, TrainConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(TrainConfig, args, section="train")
    data = args.data[0] if len(args.data) == 1 and args.stage != "joint" else args.data
    final = run_train(args.model, data, args.stage, cfg, args.out, resume=args.resume,
                      device=args.device, dtype=args.dtype, limit=args.limit)
    print(final)
    return 0
