"""Independent re-computation of a seed-pooled paired row (no sert import): per question, the mean over
seeds of (treatment correct - baseline correct); delta = mean over questions; wins/losses summed over
seeds; p from 5000 random sign flips of the per-question differences; CI from 2000 question resamples.
Usage: indep_pooled.py T_SEED1 B_SEED1 T_SEED2 B_SEED2 ..."""
import json, random, sys

from indep_paired import load  # the same reader: {id: correct} from predictions.jsonl(.xz/.gz)

pairs = [({i: int(c) for i, c in load(a).items()}, {i: int(c) for i, c in load(b).items()}) for a, b in zip(sys.argv[1::2], sys.argv[2::2])]
ids = sorted(pairs[0][0])
assert all(set(t) == set(ids) == set(b) for t, b in pairs)
d = [sum(t[i] - b[i] for t, b in pairs) / len(pairs) for i in ids]
w = sum(t[i] > b[i] for t, b in pairs for i in ids); l = sum(t[i] < b[i] for t, b in pairs for i in ids)
N = len(d); obs = sum(d) / N
rng = random.Random(7)
ext = sum(abs(sum(x if rng.random() < .5 else -x for x in d) / N) >= abs(obs) - 1e-12 for _ in range(5000))
boots = sorted(sum(d[rng.randrange(N)] for _ in range(N)) / N for _ in range(2000))
print(json.dumps({"n": N, "seeds": len(pairs), "delta_pp": round(100 * obs, 2), "wins": w, "losses": l,
                  "p_signflip": round((ext + 1) / 5001, 4), "ci95": [round(100 * boots[50], 2), round(100 * boots[1949], 2)]}))
