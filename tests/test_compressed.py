"""Issue 25: compressed files are read as if they were plain. The vendored data are stored xz-compressed
(each decompresses to the upstream file SOURCES.md names, byte for byte), sert's readers take ``.xz`` and
``.gz`` files, and a damaged one is reported in one line."""
from __future__ import annotations

import gzip
import hashlib
import json
import lzma
import re

import pytest

from sert.errors import SertError
from sert.io import read_json, read_jsonl, read_text
from sert.tasks import DATA, data_file, read_data

RECS = [{"id": "q1", "text": "caf\u00e9 \u2028 line"}, {"id": "q2", "text": "two"}]
TEXT = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECS)


def blob_id(data: bytes) -> str:
    """What ``git hash-object`` prints for a file with these bytes."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data).hexdigest()


@pytest.mark.parametrize("suffix,compress", [("", lambda b: b), (".xz", lzma.compress), (".gz", gzip.compress)])
def test_readers_take_plain_xz_and_gz_alike(tmp_path, suffix, compress):
    p = tmp_path / f"r.jsonl{suffix}"
    p.write_bytes(compress(TEXT.encode()))
    assert read_text(p) == TEXT
    assert read_jsonl(p) == RECS
    j = tmp_path / f"r.json{suffix}"
    j.write_bytes(compress(json.dumps(RECS).encode()))
    assert read_json(j) == RECS


@pytest.mark.parametrize("suffix,compress", [(".xz", lzma.compress), (".gz", gzip.compress)])
def test_a_damaged_compressed_file_is_one_line(tmp_path, suffix, compress):
    p = tmp_path / f"r.jsonl{suffix}"
    p.write_bytes(compress(TEXT.encode())[:-12])  # cut short, as an interrupted copy leaves it
    for read in (read_text, read_jsonl):
        with pytest.raises(SertError, match=rf"r\.jsonl\{suffix}: damaged {suffix[1:]} file"):
            read(p)
    with pytest.raises(SertError, match="file not found"):
        read_text(tmp_path / f"none{suffix}")


def test_vendored_data_are_stored_xz_and_decompress_to_the_listed_originals():
    """Every data file but SOURCES.md and the selections' funnel summaries is stored as ``NAME.xz``; each
    file SOURCES.md lists with a blob id is there, and its decompressed bytes have that blob id."""
    stored = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*") if p.is_file()
                    and "__pycache__" not in p.parts)
    plain = [s for s in stored if not s.endswith(".xz")]
    assert plain and all(s == "SOURCES.md" or s.endswith(".funnel.json") for s in plain), plain
    listed, folder = [], ""
    for line in (DATA / "SOURCES.md").read_text().splitlines():
        if line.startswith("### "):
            folder = line[4:].strip()  # sert's own selections name their files within this folder
        m = re.match(r"- `([^`]+)`[:( ].*?blob `([0-9a-f]{40})`", line)
        if m:
            name = m.group(1) if "/" in m.group(1) else f"{folder}/{m.group(1)}"
            listed.append((name, m.group(2)))
    names = {name for name, _ in listed}
    assert len(listed) == len(names) == len(stored) - len(plain)  # every stored file is listed once
    for name, blob in listed:
        assert name + ".xz" in stored, name
        assert data_file(name) == DATA / (name + ".xz")
        assert blob_id(lzma.decompress((DATA / (name + ".xz")).read_bytes())) == blob, name


def test_a_missing_vendored_file_names_itself(tmp_path):
    assert json.loads(read_data("strategyqa/strategy_qa__default.json"))["test"]
    with pytest.raises(SertError, match="vendored data file strategyqa/nope.json is missing"):
        read_data("strategyqa/nope.json")


def test_a_shipped_selection_trains_from_its_xz_file():
    """``sert train --stage self --data <selection>.jsonl.xz``, as SOURCES.md says: the records load as such."""
    from sert.train import load_records

    f = data_file("strategyqa/selected/smollm2-135m_full/sert_ac.jsonl")
    recs, src = load_records("self", f)
    assert src.endswith("sert_ac.jsonl.xz") and len(recs) == 502
    assert recs == read_jsonl(f) and {"question", "answer", "path"} <= set(recs[0])
