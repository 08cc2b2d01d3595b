"""The selections shipped in ``sert/data/<task>/selected/smollm2-135m_full`` are what ``sert filter`` makes of
the mined paths committed in ``notes/`` (issue 13): a change to a filter rule, the selection key or the record
format that would make them unreproducible fails here."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from sert.config import FilterConfig, from_dict
from sert.filters import run_filter
from sert.io import read_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "sert" / "data"
SHIPPED = [("strategyqa", "sqa_full_mine.jsonl.gz"), ("commonsense_qa", "csqa_full_mine.jsonl.gz")]


@pytest.mark.parametrize("task,mined", SHIPPED)
def test_shipped_selections_are_reproduced_by_sert_filter(task, mined, tmp_path):
    src = ROOT / "notes" / mined
    if not src.exists():  # an sdist or installed package has no notes/
        pytest.skip(f"{src} not in this checkout")
    paths = tmp_path / "paths.jsonl"
    with gzip.open(src, "rb") as f, open(paths, "wb") as g:
        shutil.copyfileobj(f, g)
    shipped = DATA / task / "selected" / "smollm2-135m_full"
    names = sorted(p.name[: -len(".funnel.json")] for p in shipped.glob("*.funnel.json"))
    assert names == ["sert", "sert_ac", "sert_ppl"]
    for name in names:
        funnel = json.loads((shipped / f"{name}.funnel.json").read_text())
        cfg = from_dict(FilterConfig, funnel["config"], source=f"{name}.funnel.json")
        out = run_filter(paths, tmp_path / name, cfg)
        got = (tmp_path / name / "selected.jsonl").read_text(encoding="utf-8")
        want = read_text(shipped / f"{name}.jsonl.xz")
        assert got == want, f"{task}/{name}: sert filter no longer reproduces the shipped selection"
        assert [s["paths"] for s in out["stages"]] == [s["paths"] for s in funnel["stages"]]
        assert len(want.splitlines()) == funnel["stages"][-1]["paths"]
