"""``sert run``, ``sert demo``, ``sert configs`` (library: :func:`sert.pipeline.run_experiment`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import SertError


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

    d = sub.add_parser("demo", help="a CPU-sized SERT experiment on the embedded model, end to end (~10 min on 2 cores)",
                       description="Runs the packaged demo config (all five arms on StrategyQA with the embedded "
                                   "SmolLM2-135M) and writes a full report. Resumable.")
    d.add_argument("--out", default=None, metavar="DIR", help="run directory (default: runs/demo)")
    d.add_argument("--set", dest="sets", action="append", metavar="KEY=VALUE", help="override a config key")
    d.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                   help="train every arm once per seed (= --set train.seeds=[...])")
    d.add_argument("--quiet", action="store_true", help="no progress lines")
    d.set_defaults(func=demo)

    c = sub.add_parser("configs", help="list the configs shipped with sert, or print one (to copy and edit)",
                       description="'sert configs' lists the shipped configs (paper settings and CPU sizes); "
                                   "'sert configs show NAME > my.yaml' copies one to edit; 'sert run NAME' runs one.")
    c.add_argument("action", nargs="?", choices=["list", "show"], default="list")
    c.add_argument("name", nargs="?", help="with show: the config's name, e.g. paper/strategyqa_gpt2")
    c.set_defaults(func=configs)


def parse_sets(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` items as a dict of dotted keys to YAML-parsed values."""
    import yaml

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


def _run_and_print(cfg_path: Path, args: argparse.Namespace) -> int:
    from ..config import load_run_config
    from ..pipeline import format_duration, run_experiment
    from ..report import summary_table

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
    from ..pipeline import resolve_config

    return _run_and_print(resolve_config(args.config), args)


def demo(args: argparse.Namespace) -> int:
    from ..pipeline import packaged_config

    return _run_and_print(packaged_config("demo"), args)


def _first_comment(path: Path) -> str:
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and line.strip("# "):
            return line.strip("# ")
    return ""


def configs(args: argparse.Namespace) -> int:
    from ..pipeline import packaged_config, shipped_configs

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
        print(f"{name:<{width}}  {_first_comment(path)}")
    print("\nsert run NAME runs one; sert configs show NAME > my.yaml copies one to edit (then: sert run my.yaml)")
    return 0
