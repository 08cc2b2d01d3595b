"""Issue 25: the GPU procedure of bench/gpu/ rehearsed on the CPU, end to end. A tiny random Llama written as a
GGUF with the embedded tokenizer stands in for SmolLM2's; ``pack_model.py`` cuts it into two parts with
checksums and a carried wheel; ``run_on_gpu.py`` is then called as the two device calls are made (the first
carries part 1 and only keeps it, the second carries part 2 and the wheel): it joins and checks the model,
installs the wheel, lets sert convert the GGUF as it converts the real one (``model: smollm2-135m``
unchanged) and runs a shipped config, whose results come back as at most 8 files of at most 16 MiB. A
damaged or missing part or wheel is refused in one line before anything runs."""
from __future__ import annotations

import base64
import hashlib
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "bench" / "gpu"
MIB = 1 << 20
PROBE = "sert_gpu_probe"


def load(name: str):
    return importlib.import_module(f"bench.gpu.{name}")


def probe_wheel(dest: Path) -> Path:
    """A minimal pure-Python wheel, standing in for the gguf wheel the real procedure carries."""
    files = {f"{PROBE}/__init__.py": b"CARRIED = True\n",
             f"{PROBE}-0.1.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {PROBE}\nVersion: 0.1\n".encode(),
             f"{PROBE}-0.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                             b"Tag: py3-none-any\n"}
    record = "".join(f"{k},sha256={base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b'=').decode()},"
                     f"{len(v)}\n" for k, v in files.items()) + f"{PROBE}-0.1.dist-info/RECORD,,\n"
    whl = dest / f"{PROBE}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(whl, "w") as z:
        for k, v in files.items():
            z.writestr(k, v)
        z.writestr(f"{PROBE}-0.1.dist-info/RECORD", record)
    return whl


def script(name: str, *args, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "SERT_DTYPE_PROBE": "0"}
    env.pop("OUT", None)
    env.pop("SERT_GGUF", None)
    return subprocess.run([sys.executable, str(GPU / name), *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    """The tiny GGUF and what pack_model.py made of it (2 parts, the probe wheel), plus one folder per
    device call holding what that call carries."""
    tmp = tmp_path_factory.mktemp("gpu")
    gguf = tmp / "tiny.gguf"
    r = script("tiny_gguf.py", gguf, "--vocab", 1024)
    assert r.returncode == 0, r.stderr
    r = script("pack_model.py", "--model-file", gguf, "--out", tmp / ".gpu", "--parts", 2,
               "--wheel", probe_wheel(tmp))
    assert r.returncode == 0, r.stderr
    calls = {}
    for k, carried in ((1, ["part-1"]), (2, ["part-2", "wheels"])):
        calls[k] = tmp / f"call{k}"
        for c in carried:
            shutil.copytree(tmp / ".gpu" / c, calls[k] / c)
    return tmp, gguf, calls, r.stdout


def test_pack_writes_parts_that_join_to_the_model(packed):
    tmp, gguf, _, plan = packed
    m = json.loads((tmp / ".gpu" / "manifest.json").read_text())
    data = gguf.read_bytes()
    assert m["file"] == "tiny.gguf" and m["bytes"] == len(data) and m["sha256"] == hashlib.sha256(data).hexdigest()
    parts = [(tmp / ".gpu" / e["dir"] / e["name"]).read_bytes() for e in m["parts"]]
    assert len(parts) == 2 and b"".join(parts) == data and all(parts)
    for e, b in zip(m["parts"], parts):
        assert e["bytes"] == len(b) and e["sha256"] == hashlib.sha256(b).hexdigest()
        assert json.loads((tmp / ".gpu" / e["dir"] / "manifest.json").read_text()) == m  # each part carries it
    assert [w["name"] for w in m["wheels"]] == [f"{PROBE}-0.1-py3-none-any.whl"]
    assert 'call 2: carry [".gpu/part-2", ".gpu/wheels"]' in plan.replace(str(tmp) + "/", "")


def test_the_part_count_fits_each_call_beside_the_tree():
    pm = load("pack_model")
    model = 98_362_432  # the embedded GGUF
    assert pm.plan_parts(model, 15 * MIB, 64 * MIB, MIB, None) == 2   # 47 MiB parts beside a 15 MiB tree
    assert pm.plan_parts(model, 20 * MIB, 64 * MIB, MIB, None) == 3   # a 20 MiB tree: 2 parts would not fit
    assert pm.plan_parts(model, 20 * MIB, 64 * MIB, MIB, 5) == 5
    tree = pm.travelling_tree_bytes()
    tracked = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True).stdout.split(b"\0")
    assert tree >= sum((ROOT / n.decode()).lstat().st_size for n in tracked if n and (ROOT / n.decode()).exists())


def test_two_calls_rebuild_the_model_and_run_a_config(packed):
    tmp, gguf, calls, _ = packed
    root, out1, out2 = tmp / "machine", tmp / "out1", tmp / "out2"
    r = script("run_on_gpu.py", "--stage", "--parts-dir", calls[1], "--root", root, "--out", out1)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kept parts [1] of 2" in r.stdout and (root / "parts" / "model.part1").is_file()
    assert not (root / "model").exists()  # nothing joined, installed or run yet

    r = script("run_on_gpu.py", "--parts-dir", calls[2], "--root", root, "--out", out2, "--fresh", "demo",
               "--set", "device=cpu", "--set", "arms=[base,finetune]", "--set", "train_limit=4",
               "--set", "train.epochs=1", "--set", "eval.limit=2", "--set", "eval.max_new_tokens=4", "--quiet")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "part 1/2: kept by an earlier call" in r.stdout and "part 2/2: carried, checked" in r.stdout

    files = {p.name: p.stat().st_size for p in out2.iterdir()}
    assert {"gpu_job.json", "job.log", "metrics.json", "report.md", "run.tar.xz"} <= set(files)
    assert len(files) <= 8 and max(files.values()) <= 16 * MIB
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", n) for n in files) and all(p.is_file() for p in out2.iterdir())

    job = json.loads((out2 / "gpu_job.json").read_text())
    assert job["exit"] == 0 and job["steps"]["parts"]["have"] == [1, 2] and job["steps"]["assemble"]["sha256_ok"]
    assert job["steps"]["wheels"]["installed"] == [f"{PROBE}-0.1-py3-none-any.whl"]
    assert (root / "site" / PROBE / "__init__.py").is_file()
    assert job["steps"]["load_model"]["ok"] and set(job["out_files"]) == set(files)  # the log grows after
    # sert converted the joined tiny GGUF (not another copy of the model) into its cache
    assert (root / "model" / "tiny.gguf").read_bytes() == gguf.read_bytes()
    converted = Path(job["versions"]["model_dir"])
    assert converted == root / "cache" / "models" / "smollm2-135m"
    assert json.loads((converted / "config.json").read_text())["vocab_size"] == 1024

    metrics = json.loads((out2 / "metrics.json").read_text())
    assert set(metrics) == {"base", "finetune"} and all(m["n"] == 2 for m in metrics.values())
    assert "Finetune" in (out2 / "report.md").read_text()
    with tarfile.open(out2 / "run.tar.xz") as t:
        names = t.getnames()
        preds = t.extractfile("run/eval/finetune/predictions.jsonl").read().decode().splitlines()
        cfg = t.extractfile("run/config.yaml").read().decode()
    assert len(preds) == 2 and "run/arms/finetune/train_summary.json" in names
    assert not [n for n in names if n.endswith((".safetensors", ".bin", "tokenizer.json"))]
    assert re.search(r"(?m)^model: smollm2-135m$", cfg)


def test_a_damaged_or_missing_part_or_wheel_is_refused_in_one_line(packed, tmp_path):
    tmp, _, calls, _ = packed
    bad = tmp_path / "bad"
    shutil.copytree(calls[2], bad)
    part = bad / "part-2" / "model.part2"
    data = bytearray(part.read_bytes())
    data[len(data) // 2] ^= 0x01
    part.write_bytes(bytes(data))
    cases = [
        (bad, tmp_path / "m1", "part 2 of 2 .* is damaged"),     # one flipped bit
        (calls[2], tmp_path / "m2", r"part\(s\) 1 of 2 missing"),  # part 1 was never carried to this machine
    ]
    wheel = tmp_path / "badwheel"
    shutil.copytree(calls[2], wheel)
    w = next((wheel / "wheels").glob("*.whl"))
    w.write_bytes(w.read_bytes() + b"x")
    shutil.copytree(calls[1] / "part-1", wheel / "part-1")
    cases.append((wheel, tmp_path / "m3", "wheel .* is damaged"))
    for carried, root, msg in cases:
        out = tmp_path / f"out-{root.name}"
        r = script("run_on_gpu.py", "--parts-dir", carried, "--root", root, "--out", out, "demo", timeout=60)
        assert r.returncode == 2, (msg, r.stdout, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and re.search(msg, r.stderr), r.stderr
        assert not (root / "run").exists() and not (root / "cache").exists()  # nothing ran
        assert json.loads((out / "gpu_job.json").read_text())["exit"] == 2
