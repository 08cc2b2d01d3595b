"""The driver: every requested section in turn, one model at a time, the JSON rewritten after each."""
from __future__ import annotations

import dataclasses
import datetime
import functools
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

from ...config import TrainConfig
from ...errors import SertError
from ...models import Placement, load_model, pick_placement
from ...train import training_precision
from .dtype import dtype_section
from .evaluation import bench_eval
from .figures import format_table
from .flops import bench_matmul
from .machine import load_avg, machine_info
from .mining import bench_mining
from .mining_batch import bench_mining_batch
from .settings import EXTRA_SECTIONS, SECTIONS, TARGETS, BenchSizes, sizes_for
from .training import bench_training


def targets_met(figs: Sequence[dict]) -> dict:
    out = {}
    first = {}
    for f in figs:
        if f["unit"] == "tok/s" and f["section"] not in first:
            first[f["section"]] = f
    for sec, target in TARGETS.items():
        f = first.get(sec)
        if f is None:
            continue
        met = f["ratio"] is not None and f["ratio"] >= target
        if sec == "eval":
            share = next((g["ours"] for g in figs if g["section"] == "eval" and g["figure"].startswith("share")), None)
            met = met and share == 1.0
        out[sec] = {"target_ratio": target, "ratio": f["ratio"], "met": met}
    return out


@dataclasses.dataclass(frozen=True)
class BenchRun:
    """What every section of one run shares: the model, where it runs, the sizes, the seed and the
    reference matmul (None where neither ``matmul`` nor ``mining`` was asked for)."""
    model_name: str
    place: Placement
    sizes: BenchSizes
    seed: int
    matmul: dict | None


def run_bench(model_name: str = "random:smollm2-135m", device: str | None = "auto", dtype: str | None = "auto",
              only: Sequence[str] = SECTIONS, quick: bool = False, out: str | None = None,
              overrides: dict | None = None, threads: int | None = None, seed: int = 0,
              log: Callable[[str], None] = print) -> dict:
    import torch  # lazy: start-up time (package doc)

    check_sections(only)
    if threads:
        torch.set_num_threads(threads)
    place = pick_placement(device, dtype)
    sizes = sizes_for(place.device, quick, overrides)
    result = new_result(model_name, place, quick, sizes)
    save = functools.partial(save_result, result, out)
    m = result["machine"]
    log(f"[bench] {model_name} on {place.device}/{place.dtype}; {m['gpu'] or m['cpu']}; "
        f"{m['cpu_cores_usable']} cores, {m['torch_threads']} torch threads; load {result['load_start']}")
    mm = reference_matmul(result, only, place, sizes, log, save)
    t_all = time.perf_counter()
    run = BenchRun(model_name, place, sizes, seed, mm)
    # order: mining, training, eval (the GPU check cares most about the first two); one model at a time
    for name, prepare in SECTION_STEPS.items():
        if name in only:
            measure_section(result, name, prepare(run), log, save)  # the section's model goes with its thunk
            release(place.device)
    result["wall_s"] = round(time.perf_counter() - t_all, 1)
    result["load_end"] = load_avg()
    save()
    return result


def check_sections(only: Sequence[str]) -> None:
    bad = [s for s in only if s not in SECTIONS + EXTRA_SECTIONS]
    if bad:
        raise SertError(f"--only: unknown section(s) {', '.join(bad)}; "
                        f"expected some of {', '.join(SECTIONS + EXTRA_SECTIONS)}")


def new_result(model_name: str, place: Placement, quick: bool, sizes: BenchSizes) -> dict:
    """The run's JSON before any section: command, date, model, placement, sizes, machine, load."""
    return {"command": "sert bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else None,
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "model": model_name, "placement": dataclasses.asdict(place), "quick": quick,
            "sizes": dataclasses.asdict(sizes), "machine": machine_info(place.device), "load_start": load_avg(),
            "reference": {}, "sections": {}, "figures": []}


def save_result(result: dict, out: str | None) -> None:
    """The targets from the figures so far; with ``out``, the JSON rewritten atomically."""
    result["targets"] = targets_met(result["figures"])
    if out:
        p = Path(out)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=2, default=str))
        os.replace(tmp, p)


def reference_matmul(result: dict, only: Sequence[str], place: Placement, sizes: BenchSizes, log: Callable[[str], None],
                     save: Callable[[], None]) -> dict | None:
    """The matmul FLOP/s that mining's MFU is relative to, in the dtype mining runs in (bf16 on a CPU
    where --dtype auto chose it)."""
    if "matmul" not in only and "mining" not in only:
        return None
    mm = bench_matmul(place.device, place.dtype, sizes.matmul_n)
    result["reference"]["matmul"] = mm
    log(f"[bench] matmul {mm['n']}^3 {mm['dtype']}: {mm['gflops']} GFLOP/s")
    save()
    return mm


def measure_section(result: dict, name: str, fn: Callable[[], tuple[dict, list[dict]]],
                    log: Callable[[str], None], save: Callable[[], None]) -> None:
    """Run one section (its model already loaded: loading is not part of its wall time), keep its figures."""
    t0 = time.perf_counter()
    res, figs = fn()
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    result["sections"][name] = res
    result["figures"] += figs
    log(format_table(figs))
    save()


def release(device: str) -> None:
    """After a section's model is gone: give the memory back before the next section."""
    import torch  # lazy: start-up time (package doc)

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


# Each section's preparation: load what it measures, return the measurement to time.
def mining_step(run: BenchRun) -> Callable[[], tuple[dict, list[dict]]]:
    model, tok, _ = load_model(run.model_name, run.place.device, run.place.dtype)
    flops = run.matmul["flops_per_s"] if run.matmul else None
    return lambda: bench_mining(model, tok, run.place.device, run.sizes, flops)


def training_step(run: BenchRun) -> Callable[[], tuple[dict, list[dict]]]:
    model, tok, _ = load_model(run.model_name, run.place.device, "float32")  # fp32 master weights, as sert train
    model.train()
    precision = training_precision(TrainConfig(), run.place.device, run.place.dtype)[0]
    return lambda: bench_training(model, tok, run.place.device, run.sizes, precision, seed=run.seed)


def eval_step(run: BenchRun) -> Callable[[], tuple[dict, list[dict]]]:
    model, tok, _ = load_model(run.model_name, run.place.device, run.place.dtype)
    return lambda: bench_eval(model, tok, run.place.device, run.sizes)


def dtype_step(run: BenchRun) -> Callable[[], tuple[dict, list[dict]]]:
    return lambda: dtype_section(run.model_name, run.place, run.sizes, run.seed)


def mining_batch_step(run: BenchRun) -> Callable[[], tuple[dict, list[dict]]]:
    load = lambda: load_model(run.model_name, run.place.device, run.place.dtype)  # noqa: E731
    return lambda: bench_mining_batch(load, run.place.device, run.sizes)


SECTION_STEPS = {"mining": mining_step, "training": training_step, "eval": eval_step, "dtype": dtype_step,
                 "mining_batch": mining_batch_step}


def report(result: dict) -> str:
    """The whole table with the machine line, as printed at the end and pasted into the README."""
    m = result["machine"]
    where = m["gpu"] or f"{m['cpu']} ({', '.join(m.get('cpu_simd') or ['no avx2'])})"
    pl = result["placement"]
    lines = [f"`{result.get('command') or 'sert bench'}` — {result['model']}, {pl['device']}/{pl['dtype']} "
             f"({pl.get('reason', '')}), {where}, {m['cpu_cores_usable']} cores / {m['torch_threads']} torch "
             f"threads, torch {m['torch']}, transformers {m['transformers']}, {result['date']}, "
             f"load avg {result['load_start']} -> {result.get('load_end')}", ""]
    if "matmul" in result["reference"]:
        mm = result["reference"]["matmul"]
        lines.append(f"Reference matmul ({mm['n']}^3, {mm['dtype']}): {mm['gflops']} GFLOP/s.")
        lines.append("")
    lines.append(format_table(result["figures"]))
    t = result.get("targets") or {}
    if t:
        lines.append("")
        lines.append("Targets: " + "; ".join(f"{k} {v['ratio']}x vs {v['target_ratio']}x: "
                                            f"{'met' if v['met'] else 'NOT met'}" for k, v in t.items()))
    return "\n".join(lines)
