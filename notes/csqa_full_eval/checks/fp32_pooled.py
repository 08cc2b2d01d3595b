"""SERT+RD vs RD on CommonsenseQA from the float32 re-evaluations (RUN/eval_fp32/<arm>) beside bf16 (RUN/eval/<arm>):
per seed (sert.metrics.compare_runs: McNemar, paired bootstrap, MDE) and pooled over seeds 42, 43 with the question as
the unit (sert.metrics.compare_clustered), as `sert report` computes them; then the answers fp32 and bf16 share.
Usage: python fp32_pooled.py RUN   (fp32_pooled.txt: its output, then `indep_pooled.py` on the four fp32 evaluations)"""
import json, sys
from sert.metrics import compare_clustered, compare_runs

run = sys.argv[1]
ld = lambda sub, arm: [json.loads(l) for l in open(f"{run}/{sub}/{arm}/predictions.jsonl")]
for sub in ("eval", "eval_fp32"):
    pa, pb = [], []
    for s, sfx in ((42, ""), (43, "-s43")):
        t, b = ld(sub, "sert_rd" + sfx), ld(sub, "rd" + sfx)
        c = compare_runs(t, b)   # only_a / only_b: questions only SERT+RD / only RD got right
        acc_t, acc_b = (sum(r["correct"] for r in x) / len(x) for x in (t, b))
        print(f"{sub} seed {s}: RD {100*acc_b:.2f}  SERT+RD {100*acc_t:.2f}  delta {100*(acc_t-acc_b):+.2f} pp  "
              f"wins/losses {c['only_a']}/{c['only_b']}  p {c['p_value']:.4f}  MDE {100*c['mde']:.2f}")
        pa += [dict(r, id=f"{r['id']}#s{s}") for r in b]
        pb += [dict(r, id=f"{r['id']}#s{s}") for r in t]
    c = compare_clustered(pa, pb, cluster=lambda r: r["id"].rsplit("#s", 1)[0])
    print(f"{sub} pooled: delta {100*c['diff']:+.2f} pp  CI [{100*c['ci'][0]:+.2f}, {100*c['ci'][1]:+.2f}]  "
          f"wins/losses {c['only_b']}/{c['only_a']}  p {c['p_value']:.4f}  MDE {100*c['mde']:.2f}")
for arm in ("rd", "sert_rd", "rd-s43", "sert_rd-s43"):   # how many answers the decoding dtype changed
    f, b = ({r["id"]: r for r in ld(sub, arm)} for sub in ("eval_fp32", "eval"))
    print(f"{arm}: fp32 {100*sum(r['correct'] for r in f.values())/len(f):.2f}%, "
          f"same answer as bf16 {sum(f[i]['pred'] == b[i]['pred'] for i in f)}/{len(f)}")
