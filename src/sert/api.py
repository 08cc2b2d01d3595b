"""sert's Python API: every stage as one typed function, with the settings of its command-line flags.

``import sert`` gives them (docs/api.md walks through them in a notebook's order)::

    import sert

    task = sert.load_task("strategyqa")
    mined = sert.mine_paths("smollm2-135m", task, "runs/nb/mine", limit=3, max_new_tokens=32)
    sel = sert.filter_paths(mined.paths, "runs/nb/filter", min_tokens=5, min_ppl=1.0)
    model = sert.train_model("smollm2-135m", sel.selected, "self", "runs/nb/sert", epochs=1)
    res = sert.evaluate_model(model.checkpoint, task, "runs/nb/eval", limit=5)
    print(res.accuracy, res.metrics["acc_ci"])

Each function takes its stage's config object (``config=``, e.g. :class:`sert.config.MineConfig`) and/or
keyword arguments named after that config's fields (the ``--flags`` of ``sert <command>``, underscores
for dashes); keywords win over the object; an unknown or ill-typed one is refused with the same one-line
:class:`sert.errors.SertError` the command line gives. Every function writes what its command writes into
its output directory (resumable, as the commands are) and returns a small frozen result naming the
files and the numbers. The names are verbs (``mine_paths``, not ``mine``) because ``sert.mine`` and the
other stage names are the stage modules themselves (their pure functions: :mod:`sert.filters`,
:mod:`sert.train`, ...).
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from .config import (EvalConfig, FilterConfig, MineConfig, RunConfig, TeachConfig, TrainConfig, _set_dotted,
                     from_dict, load_run_config, to_dict)
from .evaluate import run_eval
from .filters import run_filter
from .io import read_json, read_jsonl
from .mine import run_mine
from .pipeline import resolve_config
from .pipeline import run_experiment as _run
from .report import write_report as _write
from .tasks import Example, Task, get_task
from .teach import run_teach
from .train import run_train

PathLike = str | os.PathLike


def _settings(cls, config, overrides: dict[str, Any], source: str):
    """``cls`` from ``config`` (an instance, a dict or None) with ``overrides`` on top, validated."""
    base = to_dict(config) if dataclasses.is_dataclass(config) else dict(config or {})
    return from_dict(cls, {**base, **overrides}, source=source)


def _task_name(task: str | Task) -> str:
    return task.name if isinstance(task, Task) else str(task)


# ------------------------------------------------------------------ results
@dataclass(frozen=True)
class MineResult:
    paths: Path            # paths.jsonl: one record per mined path (sert.mine)
    meta: dict             # mine_meta.json: settings, counts, throughput

    @property
    def n_paths(self) -> int:
        return int(self.meta.get("paths", 0))


@dataclass(frozen=True)
class FilterResult:
    selected: Path         # selected.jsonl: one path per surviving question
    funnel: dict           # funnel.json: paths and questions after each filter, the ablation

    @property
    def n_selected(self) -> int:
        return int(self.funnel["stages"][-1]["paths"])


@dataclass(frozen=True)
class TeachResult:
    rationales: Path       # rationales.jsonl
    summary: dict          # teach_summary.json: teacher, kept, total, failed requests


@dataclass(frozen=True)
class TrainResult:
    checkpoint: Path       # final/: a Hugging Face checkpoint (sert.models.load_model reads it)
    summary: dict          # train_summary.json: loss curve, tokens, wall time, settings


@dataclass(frozen=True)
class EvalResult:
    predictions: Path | None   # predictions.jsonl (None without an output directory)
    metrics: dict              # metrics.json: acc, acc_ci, fmt, len, rep, answer_consistency, ...

    @property
    def accuracy(self) -> float:
        return float(self.metrics["acc"])


@dataclass(frozen=True)
class ReportResult:
    markdown: Path
    html: Path


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    metrics: dict          # evaluated arm -> its metrics.json
    report: ReportResult
    stages: dict           # stage -> {"action": ran | resumed | redone | skipped, "wall_s"}


# ------------------------------------------------------------------ the stages
def load_task(name: str) -> Task:
    """A shipped task by name (``sert tasks`` lists them) or a user data file; ``.examples(split, limit)``."""
    return get_task(name)


def mine_paths(model: str, task: str | Task, out: PathLike, config: MineConfig | dict | None = None, *,
               device: str | None = None, dtype: str | None = None, progress: bool = False,
               **settings) -> MineResult:
    """Stage 1 (``sert mine``): the latent reasoning paths of ``task``'s questions under ``model``."""
    cfg = _settings(MineConfig, config, settings, "mine_paths")
    paths = run_mine(model, _task_name(task), cfg, out, device=device, dtype=dtype, progress=progress)
    return MineResult(Path(paths), read_json(Path(out) / "mine_meta.json"))


def filter_paths(paths: PathLike | MineResult, out: PathLike, config: FilterConfig | dict | None = None,
                 **settings) -> FilterResult:
    """Stage 1b (``sert filter``): the paper's filters in its order, then one path per question."""
    cfg = _settings(FilterConfig, config, settings, "filter_paths")
    src = paths.paths if isinstance(paths, MineResult) else Path(paths)
    funnel = run_filter(src, out, cfg)
    return FilterResult(Path(out) / "selected.jsonl", funnel)


def teach_rationales(task: str | Task, out: PathLike, config: TeachConfig | dict | None = None, *,
                     split: str = "train", **settings) -> TeachResult:
    """Stage 3's data (``sert teach``): the teacher's rationales (shipped, or any OpenAI-compatible endpoint)."""
    cfg = _settings(TeachConfig, config, settings, "teach_rationales")
    rat = run_teach(task if isinstance(task, Task) else str(task), cfg, out, split=split)
    return TeachResult(Path(rat), read_json(Path(out) / "teach_summary.json"))


def train_model(model: str, data: PathLike | Sequence[PathLike] | Sequence[dict] | FilterResult | TeachResult,
                stage: str, out: PathLike, config: TrainConfig | dict | None = None, *,
                device: str | None = None, dtype: str | None = None, limit: int | None = None,
                **settings) -> TrainResult:
    """Stages 2-3 and the Finetune arm (``sert train``): ``stage`` self | distill | finetune | joint on
    ``data`` (a file, its directory, a task name for finetune, records, a list of files for joint, or the
    result of :func:`filter_paths` / :func:`teach_rationales`)."""
    cfg = _settings(TrainConfig, config, settings, "train_model")
    if isinstance(data, FilterResult):
        data = data.selected
    elif isinstance(data, TeachResult):
        data = data.rationales
    elif isinstance(data, (list, tuple)) and data and isinstance(data[0], (FilterResult, TeachResult)):
        data = [d.selected if isinstance(d, FilterResult) else d.rationales for d in data]
    final = run_train(model, data, stage, cfg, out, device=device, dtype=dtype, limit=limit)
    return TrainResult(Path(final), read_json(Path(out) / "train_summary.json"))


def evaluate_model(model: str | PathLike | TrainResult, task: str | Task, out: PathLike | None = None,
                   config: EvalConfig | dict | None = None, *, device: str | None = None,
                   dtype: str | None = None, progress: bool = False, **settings) -> EvalResult:
    """Evaluation (``sert eval``): greedy decoding on the test split and the paper's metrics."""
    cfg = _settings(EvalConfig, config, settings, "evaluate_model")
    name = str(model.checkpoint if isinstance(model, TrainResult) else model)
    m = run_eval(name, _task_name(task), cfg, out, device=device, dtype=dtype, progress=progress)
    return EvalResult(Path(out) / "predictions.jsonl" if out is not None else None, m)


def write_report(run_dir: PathLike) -> ReportResult:
    """``sert report``: report.md and report.html of a run directory."""
    md, page = _write(run_dir)
    return ReportResult(Path(md), Path(page))


def run_experiment(config: RunConfig | PathLike | str, out: PathLike | None = None, *, progress: bool = False,
                   **overrides) -> RunResult:
    """``sert run``: the whole experiment of a config (a :class:`~sert.config.RunConfig`, a YAML file or a
    shipped config's name), resumable; ``overrides`` are dotted keys as ``--set`` takes them, with ``__``
    for the dot (``train__epochs=1``)."""
    sets = {k.replace("__", "."): v for k, v in overrides.items()}
    if isinstance(config, RunConfig):
        cfg = _with_sets(to_dict(config), sets)
    else:
        cfg = load_run_config(resolve_config(str(config)), sets)
    res = _run(cfg, out, progress=progress)
    return RunResult(Path(res["run_dir"]), res["metrics"], ReportResult(*map(Path, res["report"])), res["stages"])


def _with_sets(data: dict, sets: dict) -> RunConfig:
    for k, v in sets.items():
        _set_dotted(data, k, v)
    return from_dict(RunConfig, data, source="run_experiment")


def read_predictions(result: EvalResult | PathLike) -> list[dict]:
    """The records of a predictions file (one per question: output, pred, correct, consistent, ...)."""
    p = result.predictions if isinstance(result, EvalResult) else Path(result)
    return read_jsonl(p)


__all__ = ["load_task", "mine_paths", "filter_paths", "teach_rationales", "train_model", "evaluate_model",
           "write_report", "run_experiment", "read_predictions", "Example", "Task", "MineResult", "FilterResult",
           "TeachResult", "TrainResult", "EvalResult", "ReportResult", "RunResult", "MineConfig", "FilterConfig",
           "TrainConfig", "TeachConfig", "EvalConfig", "RunConfig"]
