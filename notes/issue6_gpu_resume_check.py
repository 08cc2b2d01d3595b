"""Issue 6 GPU check: does a resumed `sert eval` / `sert train` equal an uninterrupted run on CUDA/bf16?

eval: the reference decodes 96 StrategyQA test questions in batches of 16 (bf16, greedy). A kill is
simulated by keeping the first K prediction lines (K cutting a batch in two). The resume is done
(a) the fixed way (sert.evaluate.batches_to_decode: whole batches of the reference's composition)
and (b) the old way (only the missing questions, batched among themselves); outputs compared.
train: two uninterrupted runs and one resumed from the epoch-1 checkpoint; max |diff| of weights.
"""
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, "src")
import torch  # noqa: E402
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from sert.config import EvalConfig, TrainConfig  # noqa: E402
from sert.evaluate import evaluate, generate_greedy  # noqa: E402
from sert.tasks import load_examples  # noqa: E402
from sert.templates import train_prompt  # noqa: E402

dev = "cuda" if torch.cuda.is_available() else "cpu"
small = dev == "cpu"
out_dir = Path(os.environ.get("OUT", tempfile.mkdtemp()))
out_dir.mkdir(parents=True, exist_ok=True)
tmp = Path(tempfile.mkdtemp())
tok = AutoTokenizer.from_pretrained("src/sert/assets/smollm2-135m")
tok.pad_token = tok.pad_token or tok.eos_token
tok.padding_side = "left"
report = {"device": torch.cuda.get_device_name() if dev == "cuda" else "cpu", "torch": torch.__version__}


def build(std: float):
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64 if small else 576, intermediate_size=128 if small else 1536,
                      num_hidden_layers=2 if small else 6, num_attention_heads=4 if small else 9,
                      num_key_value_heads=4 if small else 3, max_position_embeddings=1024, initializer_range=std,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    m = LlamaForCausalLM(cfg)
    m.generation_config.pad_token_id = tok.pad_token_id
    return m


n, B, T = (24, 4, 8) if small else (96, 16, 32)
exs = load_examples("strategyqa", "test", n)
ecfg = EvalConfig(limit=n, batch_size=B, max_new_tokens=T, n_bootstrap=10)
for std in (0.02, 0.1):
    model = build(std).to(dev, torch.bfloat16 if dev == "cuda" else torch.float32).eval()
    ref = tmp / f"ref{std}"
    evaluate(model, tok, exs, ecfg, ref, progress=False)
    ref2 = tmp / f"ref2{std}"
    evaluate(model, tok, exs, ecfg, ref2, progress=False)
    rp = {json.loads(x)["id"]: json.loads(x)["output"] for x in (ref / "predictions.jsonl").read_text().splitlines()}
    rp2 = {json.loads(x)["id"]: json.loads(x)["output"] for x in (ref2 / "predictions.jsonl").read_text().splitlines()}
    row = {"repeat_run_differs": sum(rp[k] != rp2[k] for k in rp)}
    lines = (ref / "predictions.jsonl").read_text().splitlines(keepends=True)
    for K in (B // 2, 2 * B + B // 2, len(lines) - B // 2):
        new = tmp / f"new{std}-{K}"
        new.mkdir()
        (new / "predictions.jsonl").write_text("".join(lines[:K]))
        evaluate(model, tok, exs, ecfg, new, progress=False)
        got = [json.loads(x) for x in (new / "predictions.jsonl").read_text().splitlines()]
        fixed = sum(rp[r["id"]] != r["output"] for r in got)
        done = {json.loads(x)["id"] for x in lines[:K]}
        missing = [e for e in exs if e.id not in done]
        old = generate_greedy(model, tok, [train_prompt(e.question) for e in missing], B, T, progress=False)
        oldd = sum(rp[e.id] != r["text"] for e, r in zip(missing, old))
        row[f"kill_at_{K}"] = {"resumed_fixed_differs": fixed, "resumed_old_way_differs": oldd,
                               "recomputed": len(missing), "duplicates": len(got) - len({r["id"] for r in got})}
    report[f"eval_init_std_{std}"] = row
    print(std, row, flush=True)

# ---- train: uninterrupted twice vs resumed from the epoch-1 checkpoint (bf16 mixed precision on CUDA)
from sert.train import run_train  # noqa: E402

mdir = tmp / "tiny"
build(0.02).save_pretrained(mdir)
tok.save_pretrained(mdir)
recs = [{"question": e.question, "answer": e.answer, "rationale": f"Fact {i}. It follows."}
        for i, e in enumerate(load_examples("strategyqa", "train", 16))]
tcfg = TrainConfig(epochs=3, batch_size=4, logging_steps=1, save_total_limit=3, max_length=128)


def train(d):
    t0 = time.time()
    f = run_train(str(mdir), recs, "distill", tcfg, d, device="cuda" if dev == "cuda" else "cpu")
    return f, time.time() - t0


from safetensors.torch import load_file  # noqa: E402

a, ta = train(tmp / "ta")
b, _ = train(tmp / "tb")
shutil.rmtree(tmp / "tb" / "final")
for c in sorted((tmp / "tb" / "checkpoints").iterdir()):
    if c.name != "checkpoint-4":
        shutil.rmtree(c)
r, _ = train(tmp / "tb")
wa, wb0, wr = load_file(a / "model.safetensors"), None, load_file(r / "model.safetensors")
b2, _ = train(tmp / "tc")
wb = load_file(b2 / "model.safetensors")
report["train"] = {
    "uninterrupted_vs_uninterrupted_max_abs": max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa),
    "uninterrupted_vs_resumed_max_abs": max((wa[k].float() - wr[k].float()).abs().max().item() for k in wa),
    "equal_uninterrupted": all(torch.equal(wa[k], wb[k]) for k in wa),
    "equal_resumed": all(torch.equal(wa[k], wr[k]) for k in wa),
    "loss_curves_equal": json.loads((tmp / "ta/train_summary.json").read_text())["loss_curve"]
    == json.loads((tmp / "tb/train_summary.json").read_text())["loss_curve"],
    "train_s": round(ta, 1),
}
print(report["train"], flush=True)
(out_dir / "gpu_resume_check.json").write_text(json.dumps(report, indent=2))
print(json.dumps(report, indent=2))
