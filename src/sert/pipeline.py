"""The whole experiment of SERT Table II in one call: ``sert run CONFIG.yaml``.

Stages, in order (each one module, each resumable on its own):
mine (§II-A) -> filter (§II-A) -> teach (§II-C data) -> for every arm: train, then evaluate
(§III) -> report. Arms: ``base`` (the untrained student), ``finetune`` (answer-only, from
base), ``rd`` (distillation from base), ``sert`` (self-training on the filtered latent
paths, §II-B), ``sert_rd`` (distillation started from the SERT checkpoint, §II-C).

Run directory (one per config; it tells the story)::

    RUN/config.yaml      resolved config, seeds included, with its hash
    RUN/commands.txt     the sert commands that redo each stage by hand
    RUN/stages.json      per stage: status, what this invocation did, wall time
    RUN/mine/ RUN/filter/ RUN/teach/
    RUN/arms/<arm>/      training outputs, checkpoint in final/, arm.json (init + data)
    RUN/eval/<arm>/      predictions.jsonl, metrics.json
    RUN/report.md RUN/report.html RUN/plots/

Idempotence: a stage writes ``.done.json`` into its directory (atomically) when it has
finished. A later run skips it when that marker and the stage's outputs are present and
the stages it read from are the very ones it was built on (tokens in the marker); a torn
stage (no marker) is called again and resumes itself; a stage whose input was rebuilt is
redone from scratch. A run directory made by a different config is refused (hash of the
resolved config without the operational keys below), and ``io.RunLock`` keeps a second
process out.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import gc
import hashlib
import json
import os
import shlex
import shutil
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import yaml

from .arms import (PAPER_ARMS, Source, arm_identity, arm_sources, arm_table, curve_arms, curve_epochs, curve_name,
                   round_instance, training_order)
from .config import FilterConfig, RunConfig, TrainConfig, check, from_dict, load_yaml, to_dict
from .errors import SertError, did_you_mean
from .identity import refuse_other
from .evaluate import resolve_budget, run_eval
from .filters import run_filter
from .io import RunLock, atomic_write_json, atomic_write_text, read_json, read_jsonl
from .judge import run_judge
from .mine import run_mine
from .models import check_model
from .report import write_report
from .tasks import get_task
from .teach import resolve_teacher, run_teach
from .train import OPERATIONAL as TRAIN_OPERATIONAL, check_report_to, longest_training_completion, run_train
from .version import __version__
from .log import get as _get_logger

log = _get_logger(__name__)

# Keys that change how a run is executed or labelled, not what it computes: a run directory
# may be resumed with other values (e.g. on another device, with smaller batches for generation,
# or with arms added).
OPERATIONAL_KEYS = {"out", "arms", "device", "mine.batch_questions", "eval.batch_size", "eval.decoder",
                    "eval.draft_tokens", *(f"train.{k}" for k in TRAIN_OPERATIONAL),
                    "teach.concurrency", "teach.max_retries", "teach.timeout",
                    # the Fig. 4 judge stage reads the filter sets and changes nothing the arms compute
                    "judge.enabled", "judge.model", "judge.base_url", "judge.sample", "judge.seed",
                    # Keys a run may change and still be the same run: the stages they affect record what
                    # they were built with (Stage.identity) and are redone when it differs.
                    "eval.max_new_tokens", "eval.budget_margin", "eval.budget_factor", "eval.default_budget", "train.seeds",
                    "train.seed_arms", "train.eval_epochs", "train.curve_arms",
                    "arm_specs"}
# Keys added after runs were made, at the value that stands for their absence: a config at that value
# keeps the identity (hash) it had before the key existed, so such a run directory still resumes.
ADDED_KEYS = {"mine.prompt": "zero-shot", "filter.drop_unfinished": False, "filter.ppl_branch_token": True,
              "train.self_weight": 1.0}
ADDED_FILTER_KEYS = {k.split(".", 1)[1]: v for k, v in ADDED_KEYS.items() if k.startswith("filter.")}
MARKER = ".done.json"
VERB = {"ran": "running", "resumed": "resuming (torn earlier)",
        "redone": "redoing (its input was rebuilt or its settings changed)"}


# ------------------------------------------------------------------ config identity
def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_identity(cfg: RunConfig) -> dict:
    """The resolved config without operational keys (and keys added later, at their defaults): what defines
    the experiment."""
    return {k: v for k, v in _flatten(to_dict(cfg)).items()
            if k not in OPERATIONAL_KEYS and not (k in ADDED_KEYS and v == ADDED_KEYS[k])}


def config_hash(cfg: RunConfig) -> str:
    """Hash of :func:`config_identity`; integral floats count as integers (a default ``20`` and the
    ``20.0`` read back from config.yaml are one value)."""
    ident = {k: int(v) if isinstance(v, float) and v.is_integer() else v for k, v in config_identity(cfg).items()}
    blob = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _read_run_config(run_dir: Path) -> RunConfig:

    return from_dict(RunConfig, load_yaml(run_dir / "config.yaml"), source=str(run_dir / "config.yaml"))


def _check_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Refuse a directory that holds another experiment (or anything that is not a run)."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise SertError(f"--out {run_dir}: exists and is not a directory; use another --out")
    if not (run_dir / "config.yaml").exists():
        stray = [p.name for p in run_dir.iterdir() if p.name != ".sert.lock"]
        if stray == ["mine"] and (run_dir / "mine" / "mine_meta.json").is_file():
            return  # mined paths seeded from elsewhere (e.g. a committed partial mine): the miner checks
            #         their settings against the config before it resumes them
        if stray:
            raise SertError(f"{run_dir} exists and is not a sert run directory (no config.yaml; holds "
                            f"{', '.join(sorted(stray)[:3])}{'...' if len(stray) > 3 else ''}); use another --out")
        return
    old = _read_run_config(run_dir)
    if config_hash(old) == config_hash(cfg):
        return
    refuse_other(run_dir, "was made by a different config", config_identity(old), config_identity(cfg),
                 f"use another --out, or delete {run_dir} to start over", limit=5)


def _check_inputs(cfg: RunConfig) -> None:
    """What can be checked cheaply, checked before the run directory is created: the task and
    the splits the arms read, the student, the teacher, the judge, the API key."""

    task = get_task(cfg.task)
    sources = data_sources(cfg)
    kinds = {s.kind for s in sources}
    task.examples(cfg.eval.split, cfg.eval.limit)
    if any(s.mined for s in sources):
        task.examples(cfg.mine.split, cfg.mine.limit)
    if kinds & {"task", "teach"}:
        task.examples("train", cfg.train_limit)
    if sources:  # arms are trained: a logger the Trainer does not know is refused now, not after the first stages
        check_report_to(cfg.train.report_to)
    check_model(cfg.model)
    online = []
    if "teach" in kinds:
        if resolve_teacher(task, cfg.teach.teacher).startswith("openai:"):
            online.append(("teach.base_url", cfg.teach.base_url))
    if cfg.eval.judge:
        spec = cfg.eval.judge
        if not spec.startswith("openai:") or not spec[len("openai:"):].strip():
            raise SertError(f"eval.judge: expected openai:MODEL (any OpenAI-compatible endpoint), got {spec!r}")
        online.append(("eval.judge_base_url", cfg.eval.judge_base_url))
    if cfg.judge.enabled and "filter" in kinds:
        online.append(("judge.base_url", cfg.judge.base_url))
    for key, url in online:
        if url is None and not os.environ.get("OPENAI_API_KEY"):
            raise SertError(f"set OPENAI_API_KEY to call the OpenAI API, or set {key} for a local "
                            "OpenAI-compatible server")


def _write_config(run_dir: Path, cfg: RunConfig) -> None:

    d = to_dict(cfg)
    d["out"] = str(run_dir)
    head = (f"# Resolved config of this run (sert {__version__}); config hash {config_hash(cfg)}.\n"
            f"# Reproduce: sert run {shlex.quote(str(run_dir / 'config.yaml'))} --out {shlex.quote(str(run_dir))}\n")
    _write_if_changed(run_dir / "config.yaml", head + yaml.safe_dump(d, sort_keys=False, allow_unicode=True))


def _write_if_changed(path: Path, text: str) -> None:
    """Atomic write that leaves an identical file untouched (a rerun that skips everything writes nothing)."""
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


# ------------------------------------------------------------------ stages
@dataclass
class Stage:
    name: str                          # "mine", "train:sert", "eval:rd", ...
    dir: Path
    outputs: list[str]                 # files (relative to dir) that a finished stage has
    run: Callable[[bool], dict | None]  # run(resume) -> extra info for the marker
    deps: list[str] = field(default_factory=list)
    check: Callable[[], None] | None = None  # after the stage is complete (ran or skipped)
    command: str = ""                  # the sert command that redoes it by hand
    identity: Callable[[], dict] | None = None  # what the stage is built with beyond its deps (e.g. the
    #                                   generation budget); called once its deps are complete; a finished
    #                                   stage whose marker recorded another identity is redone
    legacy_identity: dict | None = None  # what a marker written before identities existed stands for


def _device(v: str) -> str | None:
    return None if v in (None, "auto") else v


def _rel(p: Path, run_dir: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(run_dir.resolve()))
    except ValueError:
        return str(p)


def _count(path: Path) -> int:
    return len(read_jsonl(path, tolerate_torn_tail=True)) if path.exists() else 0


def data_sources(cfg: RunConfig) -> set[Source]:
    """What the trained arms read (:class:`sert.arms.Source`): the task, the teacher's rationales, the run's
    selection, arms' own selections of the run's mined paths, and (``mine_from`` arms) the selections of
    paths an arm's checkpoint mines, one per arm (its seeds and rounds each mine their own)."""
    table = arm_table(cfg.arm_specs)
    out: set[Source] = set()
    for a in training_order(cfg.arms, table):
        out.update(arm_sources(table[a], miner=a if table[a].mine_from else None))
    return out


@dataclass(frozen=True)
class Plan:
    """What every stage builder reads: the config, the run directory, the arm table, the seeds."""
    cfg: RunConfig
    run_dir: Path
    table: dict
    seeds: list[int]
    progress: bool = True

    @property
    def dev(self) -> str | None:
        return _device(self.cfg.device)

    @property
    def dt(self) -> str | None:
        return _device(self.cfg.dtype)

    @property
    def conf(self) -> str:
        return shlex.quote(str(self.run_dir / "config.yaml"))

    @property
    def devflags(self) -> str:
        c = self.cfg
        return (f" --device {shlex.quote(c.device)}" if c.device != "auto" else "") + \
            (f" --dtype {shlex.quote(c.dtype)}" if c.dtype != "auto" else "")

    def dir(self, name: str | None) -> Path:
        return self.run_dir / name if name else self.run_dir

    def instance(self, arm: str, seed: int) -> str:
        return instance_name(arm, seed, self.seeds)

    def filter_config(self, src: Source) -> FilterConfig:
        """The run's filter, with the owning arm's overrides for its own selection."""
        over = self.table[src.arm].filter if src.kind == "selection" else None
        return from_dict(FilterConfig, {**to_dict(self.cfg.filter), **over}) if over else self.cfg.filter


def build_stages(cfg: RunConfig, run_dir: Path, progress: bool = True) -> list[Stage]:
    """The stages the configured arms need, in execution order (the arm table: :mod:`sert.arms`)."""
    plan = Plan(cfg, run_dir, arm_table(cfg.arm_specs), cfg.train.seed_list(), progress)
    sources = data_sources(cfg)
    shared = sorted((s for s in sources if s.mined and s.miner is None), key=lambda s: s.stage)
    stages: list[Stage] = []
    if shared:
        stages.append(mine_stage(plan, shared[0]))
        stages += [filter_stage(plan, s) for s in shared]
        if Source("filter") in sources and cfg.judge.enabled:
            stages.append(_judge_stage(cfg, run_dir, plan.conf))
    if Source("teach") in sources:
        stages.append(teach_stage(plan))
    stages += [eval_stage(plan, a) for a in cfg.arms if plan.table[a].kind == "none"]
    curve = set(curve_arms(cfg.arms, plan.table, cfg.train.curve_arms))
    epochs = curve_epochs(cfg.train.eval_epochs, cfg.train.epochs)
    for i, seed in enumerate(plan.seeds):
        arms = cfg.arms if i == 0 or cfg.train.seed_arms is None else [a for a in cfg.arms if a in cfg.train.seed_arms]
        for arm in training_order(arms, plan.table):
            stages += arm_training_stages(plan, arm, seed, epochs if arm in curve and arm in arms else [])
            if arm in arms:
                stages.append(eval_stage(plan, arm, seed))
                stages += [eval_stage(plan, arm, seed, epoch=e) for e in (epochs if arm in curve else [])]
    return stages


def mine_stage(plan: Plan, src: Source, model: str | None = None, dep: str | None = None) -> Stage:
    """Stage 1: the run's mining (``mine``), or an arm instance's own mining with a trained checkpoint
    (``mine:<instance>``: ``model`` is that checkpoint, mined with the trained arms' prompt)."""
    cfg, q = plan.cfg, shlex.quote
    out = plan.dir(src.mine_dirname)
    mcfg = cfg.mine if src.miner is None else dataclasses.replace(cfg.mine, prompt="train")

    def mine(resume: bool) -> dict:
        start = cfg.model if dep is None else str(_checkpoint(plan.run_dir, dep.split(":", 1)[1]))
        run_mine(start, cfg.task, mcfg, out, device=plan.dev, dtype=plan.dt, progress=plan.progress)
        return {"paths": _count(out / "paths.jsonl")}

    extra = " --prompt train" if src.miner is not None else ""
    return Stage(src.mine_stage, out, ["paths.jsonl", "mine_meta.json"], mine, [dep] if dep else [],
                 command=f"sert mine --model {q(model or cfg.model)} --task {q(cfg.task)} --config {plan.conf}"
                         f"{extra} --out {q(str(out))}{plan.devflags}")


def filter_stage(plan: Plan, src: Source) -> Stage:
    """The run's filter stage (``filter``), an arm's own selection of the run's mined paths (``filter:<arm>``),
    or of the paths its checkpoint mined (``filter:<instance>``); FilterConfig = the run's with the arm's
    overrides."""
    fcfg = plan.filter_config(src)
    out, mine_dir = plan.dir(src.dirname), plan.dir(src.mine_dirname)

    def filt(resume: bool) -> dict:
        run_filter(mine_dir / "paths.jsonl", out, fcfg)
        return {"selected": _count(out / "selected.jsonl")}

    def filt_check() -> None:
        if _count(out / "selected.jsonl") == 0:
            raise SertError(f"the filters kept no latent path ({out / 'funnel.json'}): "
                            f"{'arm ' + src.owner if src.owner else 'the sert arms'} have no training data; mine more "
                            "questions (mine.limit), sample longer paths (mine.max_new_tokens) or relax the filters")

    q = shlex.quote
    over = plan.table[src.arm].filter if src.kind == "selection" else None
    sets = "".join(f" --{k.replace('_', '-')} {q(str(v).lower() if isinstance(v, bool) else str(v))}"
                   for k, v in (over or {}).items())
    return Stage(src.stage, out, ["selected.jsonl", "funnel.json"], filt, [src.mine_stage], filt_check,
                 command=f"sert filter --paths {q(str(mine_dir / 'paths.jsonl'))} --config {plan.conf}{sets} "
                         f"--out {q(str(out))}",
                 identity=(lambda: {"filter": filter_identity(fcfg)}) if src.kind == "selection" else None)


def filter_identity(fcfg: FilterConfig) -> dict:
    """A selection's settings as its stage records them; keys added since at their defaults left out, so a
    run resumed with today's code keeps its finished selections."""
    return {k: v for k, v in to_dict(fcfg).items() if not (k in ADDED_FILTER_KEYS and v == ADDED_FILTER_KEYS[k])}


def teach_stage(plan: Plan) -> Stage:
    cfg, q = plan.cfg, shlex.quote
    teach_dir = plan.dir("teach")
    limit = cfg.teach.limit if cfg.teach.limit is not None else cfg.train_limit

    def teach(resume: bool) -> dict:
        run_teach(cfg.task, cfg.teach, teach_dir, split="train", limit=limit)
        info = {"rationales": _count(teach_dir / "rationales.jsonl")}
        failed = read_json(teach_dir / "teach_summary.json").get("failed_requests", 0)
        if failed:  # the next run retries them (a marker with "retry" is not skipped)
            info["retry"] = f"{failed} teacher requests failed"
        return info

    def teach_check() -> None:
        if _count(teach_dir / "rationales.jsonl") == 0:
            raise SertError(f"the teacher stage kept no rationale ({teach_dir / 'teach_summary.json'}): the rd "
                            "arms have no training data; raise train_limit or set teach.keep_correct_only false")

    return Stage("teach", teach_dir, ["rationales.jsonl", "teach_summary.json"], teach, [], teach_check,
                 command=f"sert teach --task {q(cfg.task)} --config {plan.conf} --out {q(str(teach_dir))}"
                         + (f" --limit {limit}" if limit is not None else ""))


def eval_stage(plan: Plan, arm: str, seed: int | None = None, epoch: int | None = None) -> Stage:
    """Evaluation of an arm (``eval:<instance>``), or of its learning-curve point at the end of ``epoch``
    (``eval:<arm>@<epoch>[-s<seed>]``: the checkpoint ``arms/<instance>/epoch-<epoch>``)."""
    cfg, q = plan.cfg, shlex.quote
    trained_inst = arm if seed is None else plan.instance(arm, seed)
    name = trained_inst if epoch is None else plan.instance(curve_name(arm, epoch), seed)
    out = plan.dir("eval") / name
    untrained = plan.table[arm].kind == "none"

    def checkpoint() -> Path:
        if epoch is not None:
            return plan.run_dir / "arms" / trained_inst / f"epoch-{epoch}"
        return _checkpoint(plan.run_dir, trained_inst)

    def model_path() -> str:
        return cfg.model if untrained else str(checkpoint())

    @functools.cache
    def budget() -> dict:  # resolved once (its warning too): for the stage's identity, then for the evaluation
        return resolve_budget(cfg.eval, longest_training_completion(model_path()), label=f"arm {name}")

    def ev(resume: bool) -> dict:
        model = model_path()
        m = run_eval(model, cfg.task, cfg.eval, out, device=plan.dev, dtype=plan.dt, progress=plan.progress,
                     budget=budget())
        info = {"accuracy": f"{100 * m['acc']:.1f}%", "n": m["n"], "max_new_tokens": m["max_new_tokens"],
                "cut": f"{100 * m['cut']:.1f}%"}
        failed = m.get("judge_failed", m["n"] - m.get("judge_n", 0))  # unscored replies are final
        if cfg.eval.judge and failed:
            info["retry"] = f"{failed} judge requests failed"
        return info

    model = q(cfg.model) if untrained else q(str(plan.run_dir / "arms" / trained_inst /
                                               ("final" if epoch is None else f"epoch-{epoch}")))
    return Stage(f"eval:{name}", out, ["metrics.json", "predictions.jsonl"], ev,
                 [] if untrained else [f"train:{trained_inst}"],
                 command=f"sert eval --model {model} --task {q(cfg.task)} --config {plan.conf} "
                         f"--out {q(str(out))}{plan.devflags}",
                 identity=lambda: {"max_new_tokens": budget()["max_new_tokens"]})


def arm_training_stages(plan: Plan, arm: str, seed: int, epochs: list[int]) -> list[Stage]:
    """The stages that train ``arm`` with ``seed``: its training, or (``mine_from``) for each round the
    mining with the previous checkpoint, its own selection and the training from that checkpoint."""
    spec = plan.table[arm]
    inst = plan.instance(arm, seed)
    if spec.mine_from is None:
        return [train_stage(plan, arm, seed, inst, arm_sources(spec), spec.init, epochs)]
    out, prev = [], plan.instance(spec.mine_from, seed)
    for r in range(1, spec.rounds + 1):
        name = round_instance(inst, r, spec.rounds)
        (sel,) = [s for s in arm_sources(spec, miner=name) if s.mined]
        out.append(mine_stage(plan, sel, model=str(plan.run_dir / "arms" / prev / "final"), dep=f"train:{prev}"))
        out.append(filter_stage(plan, sel))
        srcs = arm_sources(spec, miner=name)
        out.append(train_stage(plan, arm, seed, name, srcs, prev, epochs if r == spec.rounds else [],
                               round_=(r, spec.rounds)))
        prev = name
    return out


def train_config(plan: Plan, arm: str, seed: int, epochs: list[int], sources) -> TrainConfig:
    """The training settings of one arm instance: the run's, with its seed, its learning-curve epochs, and
    per-example weights when its selection carries confidence weights or its self part is weighted."""
    t = plan.cfg.train
    weighted = t.use_weights or any(s.mined and plan.filter_config(s).confidence_weight for s in sources) or \
        (len(sources) > 1 and t.self_weight != 1.0)
    return dataclasses.replace(t, seed=seed, seeds=None, seed_arms=None, use_weights=weighted,
                               eval_epochs=list(epochs) or None, curve_arms=None)


def train_stage(plan: Plan, arm: str, seed: int, inst: str, sources, init_arm: str, epochs: list[int],
                round_: tuple[int, int] | None = None) -> Stage:
    """``train:<instance>``: train ``arm``'s stage kind on its sources, from the base model or from the
    checkpoint of ``init_arm`` (an arm name, or an instance name for a self-improvement round)."""
    cfg, spec, q = plan.cfg, plan.table[arm], shlex.quote
    out = plan.run_dir / "arms" / inst
    tcfg = train_config(plan, arm, seed, epochs, sources)
    stage = spec.train_stage
    files = [cfg.task if s.kind == "task" else str(plan.dir(s.dirname) / s.file) for s in sources]
    data = files[0] if len(files) == 1 else files
    limit = cfg.train_limit if sources[0].kind == "task" else None
    deps = [s.stage for s in sources if s.stage]
    init_inst = None if init_arm == "base" else init_arm if round_ else plan.instance(init_arm, seed)
    if init_inst:
        deps.append(f"train:{init_inst}")
    init = cfg.model if init_inst is None else str(plan.run_dir / "arms" / init_inst / "final")

    def tr(resume: bool) -> dict:
        t0 = time.time()
        start = init if init_inst is None else str(_checkpoint(plan.run_dir, init_inst))
        final = run_train(start, data, stage, tcfg, out, resume=resume, device=plan.dev, dtype=plan.dt, limit=limit)
        ts = out / "train_summary.json"
        summ = read_json(ts) if ts.exists() else {}
        info = {"arm": arm, "instance": inst, "seed": seed, "stage": spec.kind,
                "init": _rel(Path(start), plan.run_dir) if init_inst else init,
                "data": " + ".join(_rel(Path(f), plan.run_dir) if s.kind != "task" else f
                                   for s, f in zip(sources, files)), "limit": limit,
                "n_examples": summ.get("n_examples"), "max_completion_tokens": summ.get("max_completion_tokens"),
                "checkpoint": _rel(Path(final), plan.run_dir), "wall_s": round(time.time() - t0, 1),
                **({"weights": summ["weights"]} if summ.get("weights") else {}),
                **({"round": list(round_)} if round_ else {}),
                **({"epoch_snapshots": [f"epoch-{e}" for e in epochs]} if epochs else {})}
        atomic_write_json(out / "arm.json", info)
        # Trainer checkpoints (weights + Adam state, ~12 bytes/parameter) only serve a resume;
        # final/ (and epoch-*/) are the arm's checkpoints from here on.
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return {"checkpoint": info["checkpoint"]}

    ident = {"seed": seed, **({"arm": arm_identity(spec)} if arm not in PAPER_ARMS else {}),
             **({"eval_epochs": list(epochs)} if epochs else {}), **({"round": list(round_)} if round_ else {})}
    datas = "".join(f" --data {q(f)}" for f in files)
    return Stage(f"train:{inst}", out, ["arm.json", "final/config.json", *(f"epoch-{e}/config.json" for e in epochs)],
                 tr, deps,
                 command=f"sert train --stage {stage} --model {q(init)}{datas} --config {plan.conf} "
                         f"--out {q(str(out))}" + (f" --limit {limit}" if limit is not None else "")
                         + (f" --seed {seed}" if len(plan.seeds) > 1 else "")
                         + (f" --use-weights true" if tcfg.use_weights and not cfg.train.use_weights else "")
                         + (f" --eval-epochs {' '.join(map(str, epochs))}" if epochs else "") + plan.devflags,
                 identity=lambda: ident,
                 legacy_identity={"seed": cfg.train.seed} if arm in PAPER_ARMS else None)


def instance_name(arm: str, seed: int, seeds: list[int]) -> str:
    """The directory name of ``arm`` trained with ``seed``: the arm's name for the first seed (a
    one-seed run looks as it always did), ``<arm>-s<seed>`` for the others."""
    return arm if seed == seeds[0] else f"{arm}-s{seed}"


def _judge_stage(cfg: RunConfig, run_dir: Path, conf: str) -> Stage:
    """The paper's Fig. 4 (``sert judge``): judge scores of the paths each filter set keeps."""
    out = run_dir / "judge"

    def judge(resume: bool) -> dict:
        fig = run_judge(run_dir, cfg.judge, out)
        info = {"judged": sum(r["asked"] for r in fig["sets"]), "scored": sum(r["scored"] for r in fig["sets"])}
        failed = sum(r["failed"] for r in fig["sets"])
        if failed:  # the next run retries them (the cache answers the rest)
            info["retry"] = f"{failed} judge requests failed"
        return info

    return Stage("judge", out, ["fig4.json", "fig4.png"], judge, ["filter"],
                 command=f"sert judge {shlex.quote(str(run_dir))} --config {conf}")


def _checkpoint(run_dir: Path, arm: str) -> Path:
    info = read_json(run_dir / "arms" / arm / "arm.json")
    p = Path(info["checkpoint"])
    return p if p.is_absolute() else run_dir / p


# ------------------------------------------------------------------ driver
def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _marker(stage: Stage) -> dict | None:
    p = stage.dir / MARKER
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # unreadable or not UTF-8: as if absent
        return None


def _intact(p: Path) -> bool:
    """An output is there and, for JSON, readable (a damaged metrics.json makes its stage resume, which
    rebuilds it from the predictions without decoding again)."""
    if not p.exists():
        return False
    if p.suffix != ".json":
        return True
    try:
        json.loads(p.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError):
        return False


def _log(progress: bool, msg: str) -> None:
    if progress:
        log.info(msg)


class _Ledger:
    """``stages.json``: every stage's status, last action and wall/CPU time, saved after each change."""

    def __init__(self, run_dir: Path, stages: list[Stage], h: str):
        self.file, self.hash = run_dir / "stages.json", h
        state = read_json(self.file) if self.file.exists() else {}
        old = {k: v for k, v in state.get("stages", {}).items() if k in {s.name for s in stages}}
        self.table = {s.name: old.get(s.name, {"status": "pending"}) for s in stages}

    def update(self, name: str, save: bool = True, **kw) -> None:
        self.table[name].update(**kw)
        if save:
            self.save()

    def save(self) -> None:
        atomic_write_json(self.file, {"config_hash": self.hash, "updated": _now(), "stages": self.table})


def _decide(st: Stage, tokens: dict[str, str]) -> tuple[str, dict | None, dict | None]:
    """What to do with a stage: ``skipped`` (finished on the inputs it depends on, with its identity),
    ``redone`` (finished on an input since rebuilt, or with other settings), ``resumed`` (torn), ``ran``;
    with its marker and its identity."""
    mk = _marker(st)
    ident = st.identity() if st.identity else None
    outputs_ok = all(_intact(st.dir / o) for o in st.outputs)
    deps_ok = mk is not None and all(mk.get("deps", {}).get(d) == tokens.get(d) for d in st.deps) \
        and (ident is None or mk.get("identity", st.legacy_identity) == ident)
    if mk is not None and outputs_ok and deps_ok and not mk.get("retry"):
        return "skipped", mk, ident
    if mk is not None and not deps_ok:
        return "redone", mk, ident
    return ("resumed" if st.dir.exists() else "ran"), mk, ident


def _execute(st: Stage, action: str, ident: dict | None, ledger: _Ledger, tokens: dict[str, str]) -> dict:
    """Run one stage, write its marker (its token, the tokens of what it read, its identity) and its row."""
    if action == "redone":
        shutil.rmtree(st.dir)
    elif action == "resumed":  # torn (no marker) or outputs lost: the stage function resumes itself
        (st.dir / MARKER).unlink(missing_ok=True)
    ledger.update(st.name, status="running", last=action, started=_now())
    t0, c0 = time.time(), time.process_time()
    try:
        info = st.run(action == "resumed") or {}
    except BaseException as e:
        ledger.update(st.name, save=False, status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed",
                      wall_s=round(time.time() - t0, 1))
        with contextlib.suppress(OSError):  # e.g. the disk that stopped the stage is still full: its error tells
            ledger.save()
        raise
    finally:
        gc.collect()
    wall = round(time.time() - t0, 1)
    cpu = round(time.process_time() - c0, 1)  # all threads; cpu_s/wall_s far below the core count = contention
    missing = [o for o in st.outputs if not (st.dir / o).exists()]
    if missing:
        ledger.update(st.name, status="failed", wall_s=wall)
        raise SertError(f"stage {st.name} finished without writing {', '.join(missing)} in {st.dir}")
    token = uuid.uuid4().hex[:12]
    atomic_write_json(st.dir / MARKER, {"stage": st.name, "token": token, "config_hash": ledger.hash,
                                        "deps": {d: tokens[d] for d in st.deps}, "identity": ident,
                                        "wall_s": wall, "finished": _now(), **info})
    tokens[st.name] = token
    ledger.update(st.name, status="done", wall_s=wall, cpu_s=cpu, finished=_now())
    return {"action": action, "wall_s": wall, "cpu_s": cpu, "info": info}


def _run_stages(stages: list[Stage], ledger: _Ledger, run_dir: Path, progress: bool) -> dict[str, dict]:
    """Every stage in order: skipped when finished, else run (or resumed, or redone); then its check."""
    tokens: dict[str, str] = {}
    did: dict[str, dict] = {}
    n = len(stages)
    for i, st in enumerate(stages, 1):
        action, mk, ident = _decide(st, tokens)
        if action == "skipped":
            tokens[st.name] = mk["token"]
            ledger.update(st.name, save=False, status="done", last="skipped")
            did[st.name] = {"action": "skipped", "wall_s": 0.0}
            _log(progress, f"{i}/{n} {st.name}: complete, skipped")
        else:
            _log(progress, f"{i}/{n} {st.name}: {VERB[action]} -> {_rel(st.dir, run_dir)}/")
            r = _execute(st, action, ident, ledger, tokens)
            did[st.name] = {"action": action, "wall_s": r["wall_s"]}
            info = r["info"]
            _log(progress, f"{i}/{n} {st.name}: done in {format_duration(r['wall_s'])} (CPU "
                           f"{format_duration(r['cpu_s'])})"
                           + (f" ({', '.join(f'{k} {v}' for k, v in info.items())})" if info else ""))
        if st.check:
            st.check()
    return did


def run_experiment(cfg: RunConfig, out_dir: str | Path | None = None, progress: bool = True) -> dict:
    """Run (or resume) the experiment of ``cfg`` in ``out_dir`` (default ``cfg.out``).

    Returns ``{"run_dir", "config_hash", "stages": {name: {"action", "wall_s"}}, "metrics": {arm: ...},
    "report": (md, html), "retry": {stage: what failed}, "wall_s"}``; ``action`` is ran | resumed |
    redone | skipped. A stage in ``retry`` (failed teacher requests, missing judge scores) is run
    again by the next invocation.
    """
    check(cfg, "config: ")
    run_dir = Path(out_dir if out_dir is not None else cfg.out)
    _check_run_dir(run_dir, cfg)
    _check_inputs(cfg)
    t_start = time.time()
    h = config_hash(cfg)
    with RunLock(run_dir):
        _check_run_dir(run_dir, cfg)  # again, now that no other process can write it
        _write_config(run_dir, cfg)
        stages = build_stages(cfg, run_dir, progress)
        _write_if_changed(run_dir / "commands.txt", _commands_text(cfg, run_dir, stages))
        _log(progress, f"run {run_dir} (config {h}): {len(stages)} stages: {', '.join(s.name for s in stages)}")
        did = _run_stages(stages, _Ledger(run_dir, stages, h), run_dir, progress)
        md, page = _final_report(run_dir, did)
        metrics = {st.dir.name: read_json(st.dir / "metrics.json") for st in stages
                   if st.name.startswith("eval:") and (st.dir / "metrics.json").exists()}
        retry = {st.name: mk["retry"] for st in stages if (mk := _marker(st)) and mk.get("retry")}
    wall = round(time.time() - t_start, 1)
    _log(progress, f"finished in {format_duration(wall)}; report {md}")
    if retry:
        log.warning("; ".join(f"{k}: {v}" for k, v in retry.items()) + "; rerun the same command to retry them")
    return {"run_dir": run_dir, "config_hash": h, "stages": did, "metrics": metrics, "report": (md, page),
            "retry": retry, "wall_s": wall}


def _final_report(run_dir: Path, did: dict[str, dict]) -> tuple[Path, Path]:
    """The report, written again when a stage ran or a report file is missing."""
    ran = any(d["action"] != "skipped" for d in did.values())
    if ran or not (run_dir / "report.md").exists() or not (run_dir / "report.html").exists():
        return write_report(run_dir)
    return run_dir / "report.md", run_dir / "report.html"


def format_duration(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _commands_text(cfg: RunConfig, run_dir: Path, stages: list[Stage]) -> str:
    q = shlex.quote
    lines = ["# The whole experiment (idempotent: rerun to resume):",
             f"sert run {q(str(run_dir / 'config.yaml'))} --out {q(str(run_dir))}",
             "", "# Stage by stage, in order (each reads its section of config.yaml; each resumes when rerun):"]
    lines += [s.command for s in stages if s.command]
    lines += ["", "# The report (also written by sert run):", f"sert report {q(str(run_dir))}"]
    return "\n".join(lines) + "\n"


def shipped_configs() -> dict[str, Path]:
    """The configs shipped inside the package, by name: ``demo``, ``paper/strategyqa_gpt2``, ..."""
    from importlib.resources import files

    root = Path(str(files("sert") / "configs"))
    return {p.relative_to(root).with_suffix("").as_posix(): p for p in sorted(root.rglob("*.yaml"))}


def packaged_config(name: str = "demo") -> Path:
    """A config shipped inside the package (``sert/configs/NAME.yaml``; ``.yaml`` optional)."""
    shipped = shipped_configs()
    name = name.removesuffix(".yaml")
    if name not in shipped:
        raise SertError(f"no shipped config {name!r}{did_you_mean(name, shipped)}; 'sert configs' lists them")
    return shipped[name]


def resolve_config(arg: str) -> Path:
    """``sert run ARG``: a YAML file if that path exists, else a shipped config by name
    (``paper/strategyqa_gpt2``, with or without ``.yaml``)."""
    if Path(arg).exists():
        return Path(arg)
    shipped = shipped_configs()
    name = arg.removesuffix(".yaml")
    if name in shipped:
        return shipped[name]
    raise SertError(f"{arg}: config file not found, nor a shipped config of that name{did_you_mean(name, shipped)}"
                    "; 'sert configs' lists the shipped ones")
