"""Issue 25, parts 1-2: evaluation and training throughput of this tree against an older one (commit
a4e734d), back to back on this machine, and a table with the ratios.

    python3 bench/issue25_timing.py [--old /work/wt-old-a4e734d/src] [--work /tmp/issue25]
        [--questions 128] [--budget 256] [--dtypes float32,bfloat16]
        [--b-questions 64] [--checkpoint DIR|train ...] [--train-steps 50] [--skip eval-a,eval-b,train,train-compile]

Measured duration on 2 quiet cores (Zen 4, 2026-12-07): 25 min 47 s with ``--checkpoint DIR --checkpoint
train`` (the (b) checkpoint trained here once, kept in ``--work``) before the compiled variant was added;
the training section alone 737 s (old 184 s, new 134 s, new + train.compile 387 s).
``--dtypes``, ``--b-questions`` and ``--skip`` trim it.

Every measurement runs in its own process (``PYTHONPATH`` = the old or the new ``src``), one after
another, nothing else of ours running; run it on a quiet machine for the figures to report.

matmul   GEMM rate in each dtype, in the same run: a 1024^3 matmul (the issue's reference) and the
         model's own shapes (a 128-row decoding step through SmolLM2-135M's layers); MFU = model
         FLOP/s (2 x parameters per generated token, the issue's ~2 x 135M; attention not counted)
         over the 1024^3 rate.
eval (a) the embedded model, CommonsenseQA test, ``--questions`` questions, ``--budget`` new tokens,
         each tree's default eval.batch_size (old 32, new 128; ``--batch`` sets both), old
         ``generate_greedy`` (``model.generate``) vs new (``eval.decoder: rows``):
         generated tokens / decoding seconds, outputs compared record by record (token ids, text,
         finish) and answer by answer (the shared extractor).
eval (b) a checkpoint sert trained, at its automatic budget (budget_factor x longest training completion
         + margin): each ``--checkpoint``, ``train`` meaning one this script trains once into ``--work``
         and reuses (``sert teach`` CommonsenseQA's shipped rationales for ``--ckpt-questions`` 128 train questions, then
         ``sert train --stage distill`` 2 epochs, bf16: an RD arm that writes reasoning before its answer).
train    ``run_train`` of the old and the new tree on the same RD data, bf16, ``--train-steps``
         optimizer steps, batch 8, logging every step: useful (non-padding) tokens/s as sert reports
         it and max |loss_new - loss_old| over the steps; then the new tree with ``train.compile`` on a
         cold inductor cache (``--skip train-compile`` leaves it out). Each also after its first step
         (the Trainer's ``training_step`` timed from outside sert, the same in both trees): the steady
         rate, without the warm-up and the compile, whose seconds are reported beside it.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve()
NEW_SRC = HERE.parents[1] / "src"
TASK = "commonsense_qa"


# ------------------------------------------------------------------ workers (run in a child process)
def _worker_matmul(a: dict) -> dict:
    import torch

    out = {}
    for dt in a["dtypes"]:
        dtype = getattr(torch, dt)

        def rate(m, k, n, reps=None):
            x, w = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            for _ in range(3):
                torch.matmul(x, w)
            best, flop = float("inf"), 2 * m * k * n
            t_end = time.perf_counter() + 1.0
            while time.perf_counter() < t_end:
                t0 = time.perf_counter()
                torch.matmul(x, w)
                best = min(best, time.perf_counter() - t0)
            return flop / best

        # SmolLM2-135M per layer: q 576x576, k,v 576x192, o 576x576, gate/up 576x1536, down 1536x576; LM head 576x49152
        shapes = [(576, 576), (576, 192), (576, 192), (576, 576), (576, 1536), (576, 1536), (1536, 576)]

        def model_rate(m):
            t, f = 0.0, 0.0
            for k, n in shapes:
                r = rate(m, k, n)
                t += 2 * m * k * n / r
                f += 2 * m * k * n
            return f / t

        out[dt] = {"square_1024": rate(1024, 1024, 1024), "decode_rows128": model_rate(128),
                   "train_rows1024": model_rate(1024)}
    return out


def _worker_eval(a: dict) -> dict:
    import torch

    from sert.evaluate import generate_greedy
    from sert.models import load_model
    from sert.tasks import load_examples
    from sert.templates import train_prompt

    torch.manual_seed(0)
    model, tok, place = load_model(a["model"], "cpu", a["dtype"])
    exs = load_examples(TASK, "test", a["limit"])
    prompts = [train_prompt(e.question) for e in exs]
    generate_greedy(model, tok, prompts[:2], batch_size=2, max_new_tokens=4, progress=False)  # warm-up
    from sert.config import EvalConfig

    bs = a.get("batch") or EvalConfig().batch_size  # each tree's own default (old: 32, new: 128)
    t0 = time.perf_counter()
    res = generate_greedy(model, tok, prompts, batch_size=bs, max_new_tokens=a["budget"], progress=False)
    dt = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    return {"seconds": dt, "tokens": sum(len(r["token_ids"]) for r in res), "dtype": place.dtype, "batch": bs,
            "n_params": n_params, "ids": [e.id for e in exs],
            "outputs": [{"token_ids": r["token_ids"], "text": r["text"], "finish": r["finish"]} for r in res]}


def _worker_train(a: dict) -> dict:
    from sert.config import TrainConfig
    from sert.io import read_json
    from sert.train import run_train

    cfg = TrainConfig(epochs=a["epochs"], logging_steps=1, save_total_limit=1, seed=42, **a.get("extra", {}))
    marks = _clock_training_steps()
    t0 = time.perf_counter()
    run_train(a["model"], a["data"], "distill", cfg, a["out"], device="cpu", dtype="bfloat16")
    s = read_json(Path(a["out"]) / "train_summary.json")
    (t1, n1), (t2, n2) = marks[0], marks[-1]
    return {"wall": time.perf_counter() - t0, "useful_tokens_per_s": s.get("useful_tokens_per_s"),
            "train_time_s": s.get("train_time_s"), "steps": s.get("steps"),
            "losses": [c["loss"] for c in s["loss_curve"]], "loss_steps": [c["step"] for c in s["loss_curve"]],
            "tokens": s.get("tokens"), "first_step_s": round(t1 - t0, 1),
            "after_first_tokens_per_s": round((n2 - n1) / (t2 - t1), 1)}


def _clock_training_steps() -> list:
    """Wrap the Trainer's ``training_step`` (either tree: the wrap is outside sert): after each call, the
    time and the non-padding tokens so far. The steady rate is the tokens over the time after the first
    step, which carries the warm-up (and, with ``train.compile``, the compile)."""
    import transformers

    marks, seen = [], [0]
    orig = transformers.Trainer.training_step

    def training_step(self, model, inputs, *a, **k):
        out = orig(self, model, inputs, *a, **k)
        seen[0] += int(inputs["attention_mask"].sum())
        marks.append((time.perf_counter(), seen[0]))
        return out

    transformers.Trainer.training_step = training_step
    return marks


WORKERS = {"matmul": _worker_matmul, "eval": _worker_eval, "train": _worker_train}


def worker_main(kind: str, arg_file: str) -> None:
    a = json.loads(Path(arg_file).read_text())
    res = WORKERS[kind](a)
    Path(a["result"]).write_text(json.dumps(res))


# ------------------------------------------------------------------ the driver
def run_worker(kind: str, src: str, args: dict, work: Path, tag: str, env: dict | None = None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    arg_file, result = work / f"{tag}.args.json", work / f"{tag}.json"
    args = dict(args, result=str(result))
    arg_file.write_text(json.dumps(args))
    env = dict(os.environ, PYTHONPATH=src, SERT_DTYPE_PROBE="0", TOKENIZERS_PARALLELISM="false", **(env or {}))
    t0 = time.time()
    print(f"  {tag} ...", end="", flush=True, file=sys.stderr)
    subprocess.run([sys.executable, str(HERE), "--worker", kind, str(arg_file)], env=env, check=True,
                   stdout=subprocess.DEVNULL, stderr=open(work / f"{tag}.log", "w"))
    print(f" {time.time() - t0:.0f} s", file=sys.stderr)
    return json.loads(result.read_text())


def sert_cli(args: list[str], work: Path, tag: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(NEW_SRC), SERT_DTYPE_PROBE="0")
    subprocess.run([sys.executable, "-m", "sert", *args], env=env, check=True, stdout=subprocess.DEVNULL,
                   stderr=open(work / f"{tag}.log", "w"))


def rd_data(work: Path, n: int = 256) -> Path:
    """CommonsenseQA's shipped teacher rationales for ``n`` train questions (sert teach)."""
    teach = work / f"teach{n}"
    if not (teach / "rationales.jsonl").exists():
        sert_cli(["teach", "--task", TASK, "--out", str(teach), "--limit", str(n)], work, f"teach{n}")
    return teach / "rationales.jsonl"


def rd_checkpoint(work: Path, n: int, epochs: float) -> Path:
    ck = work / f"rd{n}x{epochs:g}"
    if not (ck / "final" / "config.json").exists():
        print(f"  training the (b) checkpoint (RD, {n} questions, {epochs:g} epochs) once ...", file=sys.stderr,
              flush=True)
        sert_cli(["train", "--stage", "distill", "--model", "smollm2-135m", "--data", str(rd_data(work, n)),
                  "--out", str(ck), "--epochs", f"{epochs:g}", "--dtype", "bfloat16", "--device", "cpu"], work,
                 "train_ckpt")
    return ck / "final"


def compare(old: dict, new: dict, examples) -> dict:
    sys.path.insert(0, str(NEW_SRC))
    from sert.answers import extract_answer

    same = sum(o == n for o, n in zip(old["outputs"], new["outputs"]))
    ans = sum(extract_answer(o["text"], e.kind, e.choices).answer == extract_answer(n["text"], e.kind, e.choices).answer
              for o, n, e in zip(old["outputs"], new["outputs"], examples))
    return {"identical": same, "same_answer": ans, "n": len(examples)}


def train_rows(a, old: str, new: str, work: Path, mm: dict, compiled: bool) -> list[list[str]]:
    """The training section: old, new and (``compiled``) new with ``train.compile`` on a cold inductor
    cache, each a fresh process on the same data and seed; the whole run's rate (sert's own figure) and
    the rate after the first step (warm-up and compile excluded), each against old's."""
    import shutil

    data = rd_data(work)
    epochs = a.train_steps * 8 / sum(1 for _ in open(data))
    variants = [("old", old, {}, None), ("new", new, {}, None)]
    if compiled:
        cold = work / f"inductor_cold_{int(time.time())}"  # nothing cached: the compile a first run pays
        variants.append(("new + train.compile", new, {"compile": True}, {"TORCHINDUCTOR_CACHE_DIR": str(cold)}))
    res = {}
    for tag, src, extra, env in variants:
        out = work / f"train_{tag.split()[0]}{'_compile' if extra else ''}"
        shutil.rmtree(out, ignore_errors=True)
        res[tag] = run_worker("train", src, {"model": "smollm2-135m", "data": str(data), "epochs": epochs,
                                             "out": str(out), "extra": extra}, work, out.name, env=env)
    flop_tok = 6 * 134_515_008
    peak = mm["bfloat16"]["square_1024"] if "bfloat16" in mm else None
    ro, rows = res["old"], []
    lo = dict(zip(ro["loss_steps"], ro["losses"]))
    for tag in list(res)[1:]:
        r = res[tag]
        ln = dict(zip(r["loss_steps"], r["losses"]))
        both = sorted(set(lo) & set(ln))
        dev = max(abs(lo[k] - ln[k]) for k in both) if both else float("nan")
        for what, key in (("whole run", "useful_tokens_per_s"), ("after the first step", "after_first_tokens_per_s")):
            to, tn = ro[key], r[key]
            mfu = f"{100 * to * flop_tok / peak:.1f}% / {100 * tn * flop_tok / peak:.1f}%" if peak else "-"
            rows.append([f"train bf16 {tag}, {r['steps']} steps, batch 8, {what}", f"{to}", f"{tn}",
                         f"{tn / to:.2f}x", mfu,
                         f"max abs dloss {dev:.2e} over {len(both)} steps; train s {ro['train_time_s']} / "
                         f"{r['train_time_s']}; first step s {ro['first_step_s']} / {r['first_step_s']}"])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--old", default="/work/wt-old-a4e734d/src", help="src/ of the reference tree")
    p.add_argument("--work", default="/tmp/issue25", help="scratch directory (the (b) checkpoint is kept there)")
    p.add_argument("--questions", type=int, default=128)
    p.add_argument("--budget", type=int, default=256)
    p.add_argument("--b-questions", type=int, default=64)
    p.add_argument("--checkpoint", action="append", default=None,
                   help="(b): a checkpoint sert trained, repeatable; 'train' = the one this script trains "
                        "(default: that one only)")
    p.add_argument("--ckpt-questions", type=int, default=128, help="(b) checkpoint trained here: RD questions")
    p.add_argument("--ckpt-epochs", type=float, default=2, help="(b) checkpoint trained here: epochs")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--batch", type=int, default=None, help="eval batch size of both trees (default: each its own)")
    p.add_argument("--train-steps", type=int, default=50)
    p.add_argument("--skip", default="", help="comma-separated: eval-a, eval-b, train, train-compile")
    a = p.parse_args()
    work, old, new = Path(a.work), a.old, str(NEW_SRC)
    work.mkdir(parents=True, exist_ok=True)
    skip = set(filter(None, a.skip.split(",")))
    dtypes = a.dtypes.split(",")
    sys.path.insert(0, new)
    from sert.evaluate import longest_training_completion, resolve_budget
    from sert.config import EvalConfig
    from sert.tasks import load_examples

    t_start = time.time()
    rows, notes = [], []
    mm = run_worker("matmul", new, {"dtypes": dtypes}, work, "matmul")
    for dt in dtypes:
        notes.append(f"matmul {dt}: {mm[dt]['square_1024'] / 1e9:.0f} GFLOP/s (1024^3), model shapes "
                     f"{mm[dt]['decode_rows128'] / 1e9:.0f} (128 rows) / {mm[dt]['train_rows1024'] / 1e9:.0f} "
                     "(1024 rows)")

    evals = []
    if "eval-a" not in skip:
        evals.append(("(a) embedded", "smollm2-135m", a.questions, a.budget))
    if "eval-b" not in skip:
        for i, c in enumerate(a.checkpoint or ["train"]):
            ck = rd_checkpoint(work, a.ckpt_questions, a.ckpt_epochs) if c == "train" else Path(c)
            b = resolve_budget(EvalConfig(), longest_training_completion(str(ck)))
            evals.append((f"(b{i + 1}) trained", str(ck), a.b_questions, b["max_new_tokens"]))
            notes.append(f"(b{i + 1}) checkpoint {ck}: {b['rule']} -> {b['max_new_tokens']} tokens")
    for label, model, n, budget in evals:
        exs = load_examples(TASK, "test", n)
        for dt in dtypes:
            args = {"model": model, "dtype": dt, "limit": n, "budget": budget, "batch": a.batch}
            tag = f"eval_{label[1:label.index(')')]}_{dt}"
            ro = run_worker("eval", old, args, work, tag + "_old")
            rn = run_worker("eval", new, args, work, tag + "_new")
            c = compare(ro, rn, exs)
            flop_tok = 2 * rn["n_params"]
            peak = mm[dt]["square_1024"]
            tso, tsn = ro["tokens"] / ro["seconds"], rn["tokens"] / rn["seconds"]
            rows.append([f"eval {label} {dt}, {n} q, {budget} tok", f"{tso:.1f}", f"{tsn:.1f}", f"{tsn / tso:.2f}x",
                         f"{100 * tso * flop_tok / peak:.1f}% / {100 * tsn * flop_tok / peak:.1f}%",
                         f"identical outputs {c['identical']}/{c['n']}, same answer {c['same_answer']}/{c['n']}; "
                         f"batch {ro['batch']} / {rn['batch']}; "
                         f"tokens {ro['tokens']} / {rn['tokens']}; s {ro['seconds']:.1f} / {rn['seconds']:.1f}"])

    if "train" not in skip:
        rows += train_rows(a, old, new, work, mm, compiled="train-compile" not in skip)

    head = ["what", "old tok/s", "new tok/s", "ratio", "MFU old / new", "notes"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(r) + " |")
    for n in notes:
        print(f"- {n}")
    print(f"- total {time.time() - t_start:.0f} s; old tree {old}, new tree {new}; torch threads "
          f"{os.environ.get('OMP_NUM_THREADS', 'default')}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker_main(sys.argv[2], sys.argv[3])
    else:
        main()
