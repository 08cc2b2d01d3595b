"""Independent recount (no sert import) of a seed_method_demo run: accuracy from the raw outputs with
this script's own answer reader, and answer consistency with its own reading (the final letter is the
option whose text the output names last, matched case-insensitively as a whole phrase; outputs naming no
option text are not checkable). Usage: python3 notes/seed_method/indep_demo.py RUN_DIR
(a run directory, or notes/seed_method/demo_run where the predictions are stored as .jsonl.xz)"""
import json
import lzma
import re
import sys
from pathlib import Path

run = Path(sys.argv[1])
print(f"{'arm':16} {'n':>3} {'acc sert':>8} {'acc here':>8} {'cons sert':>9} {'cons here':>9} {'checkable':>9}")
for d in sorted((run / "eval").iterdir()):
    p = d / "predictions.jsonl"
    text = p.read_text() if p.exists() else lzma.open(p.with_suffix(".jsonl.xz"), "rt").read()
    recs = [json.loads(x) for x in text.splitlines() if x.strip()]
    m = json.loads((d / "metrics.json").read_text())
    right = cons = checkable = 0
    for r in recs:
        finals = re.findall(r"answer is:?\s*\(?([A-E])\b", r["output"])
        pred = finals[-1] if finals else None
        right += pred == r["gold"]
        opts = dict(re.findall(r"\(([A-E])\)\s*(.*?)(?=\s*\([A-E]\)|$)", r["question"].split("Answer Choices:")[-1]))
        body = r["output"][: r["output"].rfind("answer is")] if pred else r["output"]
        last, where = None, -1
        for letter, text in opts.items():
            for mt in re.finditer(r"\b" + re.escape(text.strip().lower()) + r"\b", body.lower()):
                if mt.start() > where:
                    last, where = letter, mt.start()
        if pred and last:
            checkable += 1
            cons += last == pred
    acc_s = 100 * m["acc"]
    cs = m.get("answer_consistency")
    cs = "–" if cs is None else f"{100 * cs:.1f}"
    ch = f"{100 * cons / checkable:.1f}" if checkable else "–"
    print(f"{d.name:16} {len(recs):3} {acc_s:8.2f} {100 * right / len(recs):8.2f} {cs:>9} {ch:>9} {checkable:9} ({m.get('answer_consistency_n')})")
