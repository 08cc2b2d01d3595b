"""The Python API (sert.api, docs/api.md): docs/api.md's code blocks run, top to bottom, as a notebook would;
keywords override config objects; bad settings are refused in one line."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

import sert

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_api_doc_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    code = blocks(DOC.read_text(encoding="utf-8"))
    assert len(code) >= 6
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    for i, b in enumerate(code):
        exec(compile(b, f"docs/api.md block {i + 1}", "exec"), ns)   # noqa: S102 - the documentation's own code
    out = capsys.readouterr().out
    assert "paths in" in out and "accuracy" in out and "refused: filter_paths: unknown config key 'min_tokenz'" in out
    assert (tmp_path / "runs/api/eval/metrics.json").exists()


def test_keywords_win_over_the_config_object_and_are_checked(tmp_path):
    from sert.api import _settings

    cfg = _settings(sert.FilterConfig, sert.FilterConfig(min_tokens=5, select="ppl"), {"min_tokens": 7}, "x")
    assert cfg.min_tokens == 7 and cfg.select == "ppl"
    with pytest.raises(sert.errors.SertError, match=r"x: filter.max_rep2: expected a rate in \[0, 1\], got 3"):
        _settings(sert.FilterConfig, None, {"max_rep2": 3}, "x")
    with pytest.raises(sert.errors.SertError, match="unknown config key 'epoch' \\(did you mean 'epochs'\\?\\)"):
        sert.train_model("m", [], "self", tmp_path, epoch=1)
    assert not (tmp_path / "final").exists()


def test_import_sert_stays_light():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", "import sert, sys; print('torch' in sys.modules, "
                        "'transformers' in sys.modules)"], capture_output=True, text=True, check=True)
    assert r.stdout.split() == ["False", "False"]
