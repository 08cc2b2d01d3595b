"""``sert run``: the whole experiment from a config, resumable (library: :func:`sert.pipeline.run_experiment`)."""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from ..config import load_run_config
from ..errors import SertError
from ..pipeline import format_duration, resolve_config, run_experiment
from ..report import summary_table


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run the whole experiment of SERT Table II from a config (resumable)",
                       description="mine -> filter -> self-train, teach, train the arms, evaluate each, write the "
                                   "report. Rerun the same command to resume; finished stages are skipped.")
    p.add_argument("config", help="experiment YAML file, or a shipped config by name, e.g. paper/strategyqa_gpt2 "
                                  "(see 'sert configs')")
    p.add_argument("--out", default=None, metavar="DIR", help="run directory (default: the config's 'out')")
    p.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train every arm once per seed (= --set train.seeds=[...]); the report gives mean +- sd "
                        "and paired tests pooled over seeds")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=run)


def parse_sets(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` items as a dict of dotted keys to YAML-parsed values."""
    out = {}
    for it in items or []:
        key, eq, raw = it.partition("=")
        if not eq or not key.strip():
            raise SertError(f"--set {it!r}: expected key=value, e.g. --set train.epochs=2")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out


def run_and_print(cfg_path: Path, args: argparse.Namespace) -> int:
    """Run (or resume) the experiment of ``cfg_path`` with ``--set``/``--seeds``/``--out``; print its table
    (``sert run`` and ``sert demo``)."""
    sets = parse_sets(args.sets)
    if getattr(args, "seeds", None):
        sets["train.seeds"] = list(args.seeds)
    cfg = load_run_config(cfg_path, sets)
    run_dir = Path(args.out or cfg.out)
    print(f"report: {run_dir / 'report.md'} (and report.html), written when the run finishes", flush=True)
    res = run_experiment(cfg, run_dir, progress=not args.quiet)
    print(summary_table(run_dir))
    print(f"wall time {format_duration(res['wall_s'])}; report: {res['report'][0]}; html: {res['report'][1]}")
    return 0


def run(args: argparse.Namespace) -> int:
    return run_and_print(resolve_config(args.config), args)
