"""Issue 25: thin a committed mined-paths file and prove the filter cannot tell the difference.

    PYTHONPATH=src python3 notes/thin_mine.py notes/sqa_full_mine.jsonl.gz notes/sqa_full_mine.thin.jsonl.xz

Writes every path with :func:`sert.filters.thin_path` (per-token ``logprobs`` -> ``logprob_sum`` and
``logprob_first``, ``token_ids`` -> ``rep2``; every other field as it was) as xz, then runs ``sert filter`` with each shipped
selection's config (``*.funnel.json`` of the task's ``selected/smollm2-135m_full``) on the full and on the
thinned file and requires every output (selected, rejected, ablation sets, funnel) to be identical. Prints
the SHA-256 of the full file's decompressed text, recorded in the notes (the full file stays in git history).
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import lzma
import sys
import tempfile
from pathlib import Path

from sert.config import FilterConfig, from_dict
from sert.filters import run_filter, thin_path
from sert.io import open_text
from sert.tasks import DATA

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
task = "strategyqa" if src.name.startswith("sqa") else "commonsense_qa"
with open_text(src) as f:
    text = f.read()
print(f"{src}: sha256 of the decompressed text {hashlib.sha256(text.encode()).hexdigest()}, {len(text.encode())} bytes")
thin = "".join(json.dumps(thin_path(json.loads(line)), ensure_ascii=False) + "\n" for line in text.split("\n")
               if line.strip())
with lzma.open(dst, "wt", encoding="utf-8", preset=9 | lzma.PRESET_EXTREME) as g:
    g.write(thin)
print(f"{dst}: {dst.stat().st_size} bytes ({len(thin)} decompressed)")
with tempfile.TemporaryDirectory() as tmp:
    full = Path(tmp) / "paths.jsonl"
    full.write_text(text, encoding="utf-8")
    shipped = sorted((DATA / task / "selected" / "smollm2-135m_full").glob("*.funnel.json"))
    configs = [(fj.name, from_dict(FilterConfig, json.loads(fj.read_text())["config"], source=fj.name))
               for fj in shipped]
    configs.append(("no-branch-token", FilterConfig(ppl_branch_token=False)))  # the perplexity without the branch token
    for name, cfg in configs:
        fj = Path(name)
        a, b = Path(tmp) / "full" / fj.name, Path(tmp) / "thin" / fj.name
        fa, fb = run_filter(full, a, cfg), run_filter(dst, b, cfg)
        fa["paths_file"] = fb["paths_file"] = None
        assert fa == fb, f"{fj.name}: funnels differ"
        names = sorted(str(p.relative_to(a)) for p in a.rglob("*.jsonl"))
        assert names == sorted(str(p.relative_to(b)) for p in b.rglob("*.jsonl"))
        same = all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)
        assert same, f"{fj.name}: outputs differ"
        print(f"{fj.name}: {len(names)} output files identical, {fa['stages'][-1]['paths']} selected")
