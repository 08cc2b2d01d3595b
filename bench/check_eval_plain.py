"""Independent check of `sert eval`: a plain transformers loop (batch 1, `model.generate`, greedy)
and a separate answer parser (yes/no, or a multiple-choice letter A-E), against an eval directory's
predictions.jsonl.

    python bench/check_eval_plain.py RUN/eval/ARM [--limit 100] [--dtype float32]

Reads the eval's own metrics.json for the checkpoint and the budget, takes the first `--limit`
questions of its predictions.jsonl (same order as sert evaluated them), regenerates each with
nothing from sert but the prompt text "Question: {q}. Answer:" (sert/templates.py), and prints:
exact-output agreement, answer agreement, both accuracies, and sert's own predictions re-parsed
by this file's parser. Compare at float32 with an eval run at float32 (bf16 greedy decoding
depends on the batch: see README, "bf16 on this CPU").
"""
import argparse
import json
import re
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def parse(text: str, choice: bool = False) -> str | None:
    """By this file's own rules: cut at a new 'Question:'; yes/no: the last 'answer is yes/no', else the first
    yes/no word; multiple choice: the last 'answer is (X)' / 'answer is X', else the first '(X)'."""
    text = re.split(r"\n\s*Q(?:uestion)?\s*:|(?<=[.!?\s])Question\s*:", text)[0]
    if choice:
        hits = re.findall(r"[Aa]nswer is\W*?(?:\(([A-Ea-e])\)|\b([A-E])\b)", text)
        if hits:
            return "".join(hits[-1]).upper()
        w = re.search(r"\(([A-Ea-e])\)", text)
        return w.group(1).upper() if w else None
    hits = re.findall(r"answer is\W*(yes|no)\b", text, flags=re.I)
    if hits:
        return hits[-1].lower()
    w = re.search(r"\b(yes|no)\b", text, flags=re.I)
    return w.group(1).lower() if w else None


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("eval_dir", type=Path)
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--model", help="checkpoint (default: the eval's metrics.json 'model', a path relative to "
                                     "where sert ran)")
    ap.add_argument("--reparse-only", action="store_true",
                    help="no generation: re-parse every stored output with this file's parser")
    a = ap.parse_args()
    m = json.loads((a.eval_dir / "metrics.json").read_text())
    rows = [json.loads(ln) for ln in (a.eval_dir / "predictions.jsonl").read_text().splitlines()]
    choice = all(len(str(r["gold"])) == 1 and str(r["gold"]).isupper() for r in rows)  # CommonsenseQA-style golds
    reparsed = [parse(r["output"], choice) for r in rows]
    if a.reparse_only:
        acc = sum(p == r["gold"] for p, r in zip(reparsed, rows))
        diff = [(r["id"], r["pred"], p) for p, r in zip(reparsed, rows) if p != r["pred"]]
        print(json.dumps({"eval_dir": str(a.eval_dir), "n": len(rows), "same_answer": len(rows) - len(diff),
                          "acc_sert": round(100 * m["acc"], 2), "acc_reparsed": round(100 * acc / len(rows), 2),
                          "differ": diff[:10]}))
        return 0
    rows, reparsed = rows[: a.limit], reparsed[: a.limit]
    path = a.model or m["model"]
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    budget = int(m["max_new_tokens"])
    eos = model.generation_config.eos_token_id
    same_text = same_pred = ok_plain = ok_sert = reparsed_same = 0
    t0 = time.time()
    for i, r in enumerate(rows):
        ids = tok(f"Question: {r['question']}. Answer:", return_tensors="pt").input_ids
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.dtype == "bfloat16"):
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=budget, do_sample=False,
                                 eos_token_id=eos, pad_token_id=tok.pad_token_id or tok.eos_token_id,
                                 stop_strings=["Question:"], tokenizer=tok)
        text = tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
        pred = parse(text, choice)
        same_text += text.strip() == r["output"].strip()
        same_pred += pred == r["pred"]
        ok_plain += pred == r["gold"]
        ok_sert += bool(r["correct"])
        reparsed_same += reparsed[i] == r["pred"]
        if i < 3 or (i + 1) % 25 == 0:
            print(f"[{i + 1}/{len(rows)} {time.time() - t0:.0f}s] plain={pred} sert={r['pred']} gold={r['gold']}",
                  file=sys.stderr)
    n = len(rows)
    res = {"eval_dir": str(a.eval_dir), "n": n, "dtype": a.dtype, "budget": budget,
           "identical_outputs": same_text, "same_answer": same_pred, "acc_plain": round(100 * ok_plain / n, 2),
           "acc_sert": round(100 * ok_sert / n, 2), "sert_outputs_reparsed_same": reparsed_same,
           "wall_s": round(time.time() - t0, 1)}
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
