"""Independent re-computation of a paired row from two eval dirs' predictions (no sert import):
delta, wins/losses, exact two-sided McNemar (binomial) p, paired bootstrap CI over questions."""
import json, math, random, sys
from pathlib import Path

def load(d):
    p = Path(d) / "predictions.jsonl"
    if p.exists():
        rows = [json.loads(l) for l in open(p)]
    elif p.with_name(p.name + ".xz").exists():  # as committed in notes/ (issue 25)
        import lzma; rows = [json.loads(l) for l in lzma.open(str(p) + ".xz", "rt")]
    else:
        import gzip; rows = [json.loads(l) for l in gzip.open(str(p) + ".gz", "rt")]
    return {r["id"]: bool(r["correct"]) for r in rows}


def main():
    t, b = load(sys.argv[1]), load(sys.argv[2])
    ids = sorted(set(t) & set(b)); assert len(ids) == len(t) == len(b), (len(ids), len(t), len(b))
    d = [int(t[i]) - int(b[i]) for i in ids]
    w, l = d.count(1), d.count(-1); n = w + l
    k = min(w, l)
    p = min(1.0, 2 * sum(math.comb(n, j) for j in range(k + 1)) / 2 ** n) if n else 1.0
    rng = random.Random(1); N = len(d)
    boots = sorted(sum(d[rng.randrange(N)] for _ in range(N)) / N for _ in range(2000))
    print(json.dumps({"n": N, "acc_t": round(100 * sum(t.values()) / N, 2), "acc_b": round(100 * sum(b.values()) / N, 2),
                      "delta_pp": round(100 * sum(d) / N, 2), "wins": w, "losses": l, "mcnemar_p": round(p, 4),
                      "ci95": [round(100 * boots[50], 2), round(100 * boots[1949], 2)]}))


if __name__ == "__main__":
    main()
