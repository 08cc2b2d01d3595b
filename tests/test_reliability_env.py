"""Faults of the environment: each is one line naming the path and what to do, exit 2 (1 for faults that
are not the user's), never a traceback, and nothing is lost: the rerun after the fault is fixed gives
what an uninterrupted run gives.

Classes (one test or more each): a full disk (ENOSPC; by a failing ``fsync``/writer in process, so CI
always runs it, and on a real 3 MB tmpfs where mounting is permitted), quota, read-only file system,
permission, missing file, a directory where a file belongs, an I/O error (exit 1), a truncated checkpoint,
invalid UTF-8 in every kind of file a user passes, out of memory (exit 1). Also: a mine resumed after a
stop decodes whole chunks (byte-identical to an uninterrupted run), and a moved run directory keeps its
evaluations and trainings.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from reliability import (  # noqa: F401  (fixtures: quiet_env autouse)
    ENV, jsonl, quiet_env, sert, sqa_records, synthetic_paths, tiny, tree, write_jsonl,
)
from sert.errors import SertError, environment_error


def one_line(rc: int, so: str, se: str, status: int = 2, *needles: str) -> None:
    """Exit ``status``, one error line (the last; a model loaded before the fault may have drawn its progress
    bar above it), no traceback, the ``needles`` in the error line."""
    assert rc == status, (rc, so, se)
    err = se.rstrip("\n").splitlines()[-1] if se.strip() else ""
    assert se.count("sert: error: ") == 1 and err.startswith("sert: error: "), se
    assert "Traceback" not in so + se
    for n in needles:
        assert n in err, (n, err)


# ------------------------------------------------------------------ the mapping, class by class
def _safetensor_error(msg: str) -> Exception:
    from safetensors import SafetensorError
    return SafetensorError(msg)


@pytest.mark.parametrize("exc,where,status,needles", [
    (OSError(errno.ENOSPC, "No space left on device"), "/run/x", 2,
     ["/run/x: no space left on the device", "rerun the same command"]),
    (OSError(errno.ENOSPC, "No space left on device", "/run/x/paths.jsonl"), "/run/x", 2,
     ["/run/x/paths.jsonl: no space left"]),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/q/f"), None, 2, ["/q/f: disk quota exceeded"]),
    (OSError(errno.EROFS, "Read-only file system", "/ro/f"), None, 2, ["/ro/f: read-only file system",
                                                                       "use another --out"]),
    (PermissionError(errno.EACCES, "Permission denied", "/p/f"), None, 2, ["/p/f: permission denied"]),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/m/f"), None, 2, ["/m/f: no such file"]),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/d"), None, 2, ["/d: is a directory, expected a file"]),
    (OSError(errno.EIO, "Input/output error", "/io/f"), None, 1, ["/io/f: input/output error"]),
    (OSError(errno.EMFILE, "Too many open files"), None, 1, ["too many open files"]),
    ("safetensors-28", "/run/arm", 2, ["/run/arm: no space left on the device (writing a safetensors file)"]),
    ("safetensors-header", "/run/m", 2, ["/run/m: a safetensors file cannot be read", "truncated or corrupt"]),
    (RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory"), "/c", 2,
     ["/c: a PyTorch file cannot be read", "truncated or corrupt"]),
    (MemoryError(), None, 1, ["out of memory", "lower the batch sizes"]),
    (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), None, 2, ["invalid UTF-8"]),
])
def test_each_environment_fault_is_one_line_with_a_remedy(exc, where, status, needles):
    if exc == "safetensors-28":
        exc = _safetensor_error("Error while serializing: I/O error: No space left on device (os error 28)")
    elif exc == "safetensors-header":
        exc = _safetensor_error("Error while deserializing header: incomplete metadata, file not fully covered")
    err = environment_error(exc, where)
    assert isinstance(err, SertError) and err.status == status
    assert "\n" not in str(err)
    for n in needles:
        assert n in str(err), (n, str(err))


def test_bugs_and_network_errors_are_not_environment_faults():
    """Anything else keeps its traceback (a bug must be seen); connection errors are the clients' to report."""
    for exc in (ValueError("x"), KeyError("k"), RuntimeError("shape mismatch"), ConnectionResetError(104, "reset")):
        assert environment_error(exc) is None


def test_torch_writer_failure_on_a_full_device_is_named_disk_full(monkeypatch, tmp_path):
    """torch's zip writer hides the errno ("unexpected pos"): a device with almost no free space explains it."""
    exc = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 99, 1))
    err = environment_error(exc, tmp_path)
    assert err.status == 2 and "no space left on the device (writing a PyTorch file)" in str(err)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(2**40, 1, 2**40))
    err = environment_error(exc, tmp_path)
    assert err.status == 1 and "a PyTorch file could not be written" in str(err)


# ------------------------------------------------------------------ writes that fail: nothing half-written
@contextlib.contextmanager
def disk_full_after(n_ok: int, code: int = errno.ENOSPC):
    """``os.fsync`` succeeds ``n_ok`` times, then fails with ``code`` (ENOSPC: the data did not fit) until
    the block ends: every sert write (atomic file, JSONL append) fsyncs before it counts as written."""
    real, calls = os.fsync, [0]

    def fsync(fd):
        calls[0] += 1
        if calls[0] > n_ok:
            raise OSError(code, os.strerror(code))
        return real(fd)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "fsync", fsync)
        yield calls


def test_a_failed_append_is_cut_back_off_the_log(tmp_path):
    from sert.io import JsonlLog

    p = tmp_path / "log.jsonl"
    with JsonlLog(p) as log:
        log.append_many([{"a": 1}, {"a": 2}])
        before = p.read_bytes()
        with disk_full_after(0), pytest.raises(OSError) as ei:
            log.append_many([{"b": i, "pad": "x" * 5000} for i in range(20)])  # reached the file, not the disk
        assert ei.value.errno == errno.ENOSPC and ei.value.filename == str(p)
        assert p.read_bytes() == before  # all or none
        log.append_many([{"a": 3}])      # the log goes on from a clean state
    assert jsonl(p) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_a_failed_atomic_write_keeps_the_old_file_and_names_the_new_one(tmp_path):
    from sert.io import atomic_write_json

    p = atomic_write_json(tmp_path / "m.json", {"old": 1})
    with disk_full_after(0), pytest.raises(OSError) as ei:
        atomic_write_json(p, {"new": 2})
    assert ei.value.filename == str(p) and json.loads(p.read_text()) == {"old": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["m.json"]  # no temp file left


MINE = ["--task", "strategyqa", "--limit", "6", "--batch-questions", "2", "--top-k-branches", "2",
        "--samples-per-branch", "2", "--max-new-tokens", "4", "--device", "cpu", "--quiet"]
EVAL = ["--task", "strategyqa", "--limit", "12", "--batch-size", "4", "--max-new-tokens", "3", "--n-bootstrap", "20",
        "--device", "cpu", "--quiet"]


def test_disk_full_in_mine_eval_filter_teach_then_the_rerun_completes_identically(tiny, tmp_path, capsys):
    """The write that fails is the third of the command (mine: the second chunk; eval: the second batch;
    filter: an output file), teach's the second (its summary); the rerun, with space again, gives the
    uninterrupted run's files."""
    paths = synthetic_paths(tmp_path / "paths.jsonl", 20, 4)
    cmds = {
        "mine": lambda out: ["mine", "--model", tiny, *MINE, "--out", out],
        "eval": lambda out: ["eval", "--model", tiny, *EVAL, "--out", out],
        "filter": lambda out: ["filter", paths, "--min-tokens", "2", "--min-ppl", "1", "--out", out],
        "teach": lambda out: ["teach", "--task", "strategyqa", "--limit", "5", "--out", out],
    }
    volatile = {"mine_meta.json", "metrics.json", "funnel.png", "teach_summary.json", "funnel.json"}
    for name, argv in cmds.items():
        ref, out = tmp_path / f"{name}-ref", tmp_path / f"{name}-full"
        assert sert(argv(ref), capsys)[0] == 0
        with disk_full_after(1 if name == "teach" else 2):
            rc, so, se = sert(argv(out), capsys)
        one_line(rc, so, se, 2, "no space left on the device", str(out), "rerun the same command")
        if name == "mine":  # whole chunks only: the first one
            assert [r["id"] for r in jsonl(out / "paths.jsonl")][::4] == [r["id"] for r in jsonl(ref / "paths.jsonl")][:8:4]
        if name == "eval":
            assert len(jsonl(out / "predictions.jsonl")) == 4
        assert not [p for p in out.rglob("*.tmp")]
        rc, so, se = sert(argv(out), capsys)
        assert rc == 0, (name, se)
        want = {k: v for k, v in tree(ref).items() if Path(k).name not in volatile}
        assert {k: v for k, v in tree(out).items() if Path(k).name not in volatile} == want, name


def test_disk_full_in_sert_run_then_the_rerun_finishes(tiny, tmp_path, capsys):
    """A full disk while a stage of sert run writes: one line naming the stage's file; the stage table
    records the failure where it can; the rerun finishes with the predictions of an uninterrupted run."""
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump({"task": "strategyqa", "model": str(tiny), "device": "cpu", "arms": ["base"],
                                    "eval": {"limit": 8, "max_new_tokens": 3, "batch_size": 4, "n_bootstrap": 20}}))
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert sert(["run", conf, "--out", ref, "--quiet"], capsys)[0] == 0
    with disk_full_after(5):  # config.yaml, commands.txt, stages.json, eval_config.json, batch 1; batch 2 fails
        rc, so, se = sert(["run", conf, "--out", out, "--quiet"], capsys)
    one_line(rc, so, se, 2, f"{out / 'eval' / 'base' / 'predictions.jsonl'}: no space left on the device")
    assert len(jsonl(out / "eval" / "base" / "predictions.jsonl")) == 4
    rc, so, se = sert(["run", conf, "--out", out, "--quiet"], capsys)
    assert rc == 0, se
    assert (out / "eval/base/predictions.jsonl").read_bytes() == (ref / "eval/base/predictions.jsonl").read_bytes()
    assert json.loads((out / "stages.json").read_text())["stages"]["eval:base"]["status"] == "done"


def test_an_io_error_is_not_the_users_exit_1(tmp_path, capsys):
    paths = synthetic_paths(tmp_path / "paths.jsonl", 5, 4)
    with disk_full_after(0, errno.EIO):
        rc, so, se = sert(["filter", paths, "--out", tmp_path / "f"], capsys)
    one_line(rc, so, se, 1, "input/output error", "check it (dmesg)")


def test_disk_full_while_training_saves_weights(tiny, tmp_path, capsys, monkeypatch):
    """safetensors and torch report a full disk in their own words (no errno, no file): the message names
    the arm's directory; the rerun trains to the end."""
    import transformers.modeling_utils as mu

    data = write_jsonl(tmp_path / "r.jsonl", sqa_records(4))
    argv = lambda out: ["train", "--model", tiny, "--stage", "distill", "--data", data, "--epochs", "1",  # noqa
                        "--batch-size", "2", "--max-length", "64", "--device", "cpu", "--out", out]
    out = tmp_path / "t"
    if not hasattr(mu, "safe_save_file"):
        pytest.skip("this transformers saves weights through another function")
    real = mu.safe_save_file

    def full(*a, **k):
        raise _safetensor_error("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(mu, "safe_save_file", full)
    rc, so, se = sert(argv(out), capsys)
    one_line(rc, so, se, 2, f"{out}: no space left on the device (writing a safetensors file)")
    assert not (out / "final").exists() and not list(out.glob(".final-tmp-*"))
    monkeypatch.setattr(mu, "safe_save_file", real)
    import torch
    real_save = torch.save

    def torch_full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")

    monkeypatch.setattr(torch, "save", torch_full)  # the optimizer state of a Trainer checkpoint
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 99, 1))
    rc, so, se = sert(argv(out), capsys)
    one_line(rc, so, se, 2, f"{out}: no space left on the device (writing a PyTorch file)")
    monkeypatch.setattr(torch, "save", real_save)
    monkeypatch.undo()
    rc, so, se = sert(argv(out), capsys)
    assert rc == 0 and (out / "final" / "model.safetensors").exists(), se


@pytest.fixture
def tmpfs(tmp_path):
    """A 3 MB tmpfs (needs root and a kernel that lets the test mount); skipped where that is not permitted."""
    d = tmp_path / "tmpfs"
    d.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the in-process disk-full tests cover the class)")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"mounting a tmpfs is not permitted here ({r.stderr.strip()[:100]})")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def test_disk_full_on_a_real_3mb_tmpfs(tiny, tmpfs, tmp_path, capsys):
    """The issue's reproduction: mine into a nearly full 3 MB tmpfs (a subprocess: no traceback anywhere),
    then the rerun with space freed equals an uninterrupted run byte for byte; training a 6 MB model there
    stops in one line."""
    argv = lambda out: ["mine", "--model", tiny, *MINE, "--limit", "8", "--max-new-tokens", "16",  # noqa: E731
                        "--out", out]
    ref = tmp_path / "ref"
    assert sert(argv(ref), capsys)[0] == 0
    size = (ref / "paths.jsonl").stat().st_size
    filler = tmpfs / "filler"
    filler.write_bytes(b"\0" * (3 * 2**20 - 2 * 4096 - size // 2))  # mine_meta, the lock, half the paths
    out = tmpfs / "m"
    r = subprocess.run([sys.executable, "-m", "sert", *map(str, argv(out))], env=ENV, capture_output=True, text=True,
                       timeout=300)
    one_line(r.returncode, r.stdout, r.stderr, 2, "no space left on the device")
    assert 0 < (out / "paths.jsonl").stat().st_size < size
    filler.unlink()
    assert sert(argv(out), capsys)[0] == 0
    assert (out / "paths.jsonl").read_bytes() == (ref / "paths.jsonl").read_bytes()
    shutil.rmtree(out)
    data = write_jsonl(tmp_path / "r.jsonl", sqa_records(2))
    rc, so, se = sert(["train", "--model", tiny, "--stage", "distill", "--data", data, "--epochs", "1",
                       "--batch-size", "2", "--max-length", "48", "--device", "cpu", "--out", tmpfs / "t"], capsys)
    one_line(rc, so, se, 2, "no space left on the device")


# ------------------------------------------------------------------ read-only, permission, missing, directory
def test_read_only_and_permission_denied_name_the_path(tmp_path, capsys, monkeypatch):
    import tempfile

    paths = synthetic_paths(tmp_path / "paths.jsonl", 5, 4)
    out = tmp_path / "f"

    def ro(*a, dir=None, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(dir))

    with monkeypatch.context() as mp:
        mp.setattr(tempfile, "mkstemp", ro)
        rc, so, se = sert(["filter", paths, "--out", out], capsys)
    one_line(rc, so, se, 2, f"{out}: read-only file system; use another --out on a writable file system")
    real_open = os.open

    def denied(path, *a, **k):
        if str(path).endswith(".sert.lock"):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)

    with monkeypatch.context() as mp:
        mp.setattr(os, "open", denied)
        rc, so, se = sert(["filter", paths, "--out", tmp_path / "g"], capsys)
    one_line(rc, so, se, 2, f"{tmp_path / 'g' / '.sert.lock'}: permission denied")
    assert not (tmp_path / "g").exists()  # the directory the command made is removed again


def test_a_directory_where_a_file_belongs_and_a_file_gone_missing(tmp_path, capsys, monkeypatch):
    from sert.config import RunConfig, to_dict

    run = tmp_path / "run"
    (run / "eval" / "rd" / "predictions.jsonl").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(to_dict(RunConfig(arms=["rd"]))))
    rc, so, se = sert(["report", run, "--rescore"], capsys)
    one_line(rc, so, se, 2, "predictions.jsonl: is a directory, expected a file")
    data = write_jsonl(tmp_path / "r.jsonl", sqa_records(2))
    import sert.train as st
    real = st.iter_jsonl_numbered

    def vanish(path, **kw):  # deleted between the check that it is a file and its read
        Path(path).unlink()
        return real(path, **kw)

    monkeypatch.setattr(st, "iter_jsonl_numbered", vanish)
    rc, so, se = sert(["train", "--stage", "distill", "--data", data, "--out", tmp_path / "t"], capsys)
    one_line(rc, so, se, 2, f"{data}: file not found")


# ------------------------------------------------------------------ a truncated checkpoint
def test_a_truncated_checkpoint_is_one_line_for_every_command_that_loads_it(tiny, tmp_path, capsys):
    bad = tmp_path / "truncated"
    shutil.copytree(tiny, bad)
    w = bad / "model.safetensors"
    os.truncate(w, w.stat().st_size // 2)
    data = write_jsonl(tmp_path / "r.jsonl", sqa_records(2))
    for argv in (["eval", "--model", bad, *EVAL], ["mine", "--model", bad, *MINE],
                 ["train", "--model", bad, "--stage", "distill", "--data", data, "--device", "cpu"]):
        out = tmp_path / f"out-{argv[0]}"
        rc, so, se = sert([*argv, "--out", out], capsys)
        one_line(rc, so, se, 2, f"--model {bad}: its weights cannot be read", "truncated or corrupt")
        assert not out.exists()


# ------------------------------------------------------------------ invalid UTF-8: file and line
def test_invalid_utf8_names_file_and_line_in_every_input(tiny, tmp_path, capsys):
    ok = json.dumps({"question": "Is ice cold?", "answer": "yes"})
    task = tmp_path / "task.jsonl"
    task.write_bytes(ok.encode() + b'\n{"question": "Is \xff hot?", "answer": "no"}\n')
    csv = tmp_path / "task.csv"
    csv.write_bytes(b"question,answer\nIs ice cold?,yes\nIs \xe9t\xe9 hot?,no\n")
    rat = tmp_path / "rationales.jsonl"
    rat.write_bytes(json.dumps(sqa_records(1)[0]).encode() + b'\n{"question": "q", "answer": "yes", '
                    b'"rationale": "caf\xc3"}\n')
    sel = tmp_path / "selected.jsonl"
    sel.write_bytes(b'{"question": "q", "answer": "yes", "path": "\xfe"}\n')
    paths = synthetic_paths(tmp_path / "paths.jsonl", 2, 2)
    paths.write_bytes(paths.read_bytes() + b'{"id": "\x80"}\n')
    conf = tmp_path / "c.yaml"
    conf.write_bytes(b"train:\n  epochs: 1\n  # \xff\n")
    runconf = tmp_path / "run.yaml"
    runconf.write_bytes(b"task: strategyqa\n\nmodel: m\xff\n")
    cases = [
        (["eval", "--model", tiny, "--task", task, "--device", "cpu"], f"{task}:2: invalid UTF-8"),
        (["mine", "--model", tiny, "--task", task, "--device", "cpu"], f"{task}:2: invalid UTF-8"),
        (["teach", "--task", task, "--teacher", "openai:x", "--base-url", "http://127.0.0.1:9/v1"],
         f"{task}:2: invalid UTF-8"),
        (["eval", "--model", tiny, "--task", csv, "--device", "cpu"], f"{csv}:3: invalid UTF-8 (byte 0xe9 at column 4)"),
        (["train", "--model", tiny, "--stage", "finetune", "--data", task], f"{task}:2: invalid UTF-8"),
        (["train", "--model", tiny, "--stage", "distill", "--data", rat], f"{rat}:2: invalid UTF-8"),
        (["train", "--model", tiny, "--stage", "self", "--data", sel], f"{sel}:1: invalid UTF-8 (byte 0xfe"),
        (["filter", paths], f"{paths}:5: invalid UTF-8 (byte 0x80"),
        (["train", "--model", tiny, "--stage", "finetune", "--data", "strategyqa", "--config", conf],
         f"{conf}:3: invalid UTF-8"),
        (["run", runconf], f"{runconf}:3: invalid UTF-8 (byte 0xff at column 9)"),
    ]
    for argv, msg in cases:
        out = tmp_path / "out"
        rc, so, se = sert([*argv, "--out", out], capsys)
        one_line(rc, so, se, 2, msg, "save the file as UTF-8")
        assert not out.exists(), argv


# ------------------------------------------------------------------ out of memory: exit 1, the remedy
def test_out_of_memory_is_one_line_exit_1(tiny, tmp_path, capsys, monkeypatch):
    import torch

    import sert.evaluate as ev

    def oom(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ev, "generate_greedy", oom)
    rc, so, se = sert(["eval", "--model", tiny, *EVAL, "--out", tmp_path / "e"], capsys)
    one_line(rc, so, se, 1, "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)", "eval.batch_size")


# ------------------------------------------------------------------ a mine resumed after a stop: whole chunks
def test_a_resumed_mine_decodes_each_unfinished_chunk_whole(tiny, tmp_path, monkeypatch):
    """A stop can leave part of a chunk in the file (a kill inside a large write): the rerun decodes that
    chunk with all its questions again, as the uninterrupted run did (the batch's composition decides the
    logits' last bits), keeps the missing ones, and the file equals the uninterrupted run's."""
    import sert.mine as mm
    from sert.config import MineConfig
    from sert.models import load_model
    from sert.tasks import load_examples

    model, tok, _ = load_model(str(tiny), "cpu", "float32")
    exs = load_examples("strategyqa", "train", 6)
    cfg = MineConfig(top_k_branches=2, samples_per_branch=2, max_new_tokens=4, batch_questions=3)
    full = tmp_path / "full.jsonl"
    mm.mine(model, tok, exs, cfg, full, progress=False)
    lines = full.read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"
    part.write_text("".join(lines[:16]) + lines[16][:30])  # chunk 1, question 4 of chunk 2, a torn line
    decoded = []
    real = mm._decode_chunk
    monkeypatch.setattr(mm, "_decode_chunk", lambda m, t, todo, *a: decoded.append([e.id for e in todo]) or
                        real(m, t, todo, *a))
    mm.mine(model, tok, exs, cfg, part, progress=False)
    assert decoded == [[e.id for e in exs[3:6]]]  # the whole second chunk, not only its two missing questions
    assert part.read_bytes() == full.read_bytes()


# ------------------------------------------------------------------ a moved run directory
def test_a_moved_run_directory_redoes_an_evaluation_and_keeps_its_trainings(tiny, tmp_path, capsys):
    """Identities are recorded relative to the directory too: after a move, a deleted metrics.json is
    redone without decoding and a training whose marker was lost is recognised, not refused; a damaged
    metrics.json is rebuilt by its stage instead of stopping the run."""
    cfg = {"task": "strategyqa", "model": str(tiny), "device": "cpu", "arms": ["base", "rd", "rd_ft"],
           "arm_specs": [{"name": "rd_ft", "kind": "finetune", "init": "rd", "data": "task"}],
           "train_limit": 4, "teach": {"keep_correct_only": False},
           "train": {"epochs": 1, "batch_size": 2, "max_length": 96, "logging_steps": 1},
           "eval": {"limit": 4, "max_new_tokens": 3, "batch_size": 4, "n_bootstrap": 20}}
    conf = tmp_path / "c.yaml"
    conf.write_text(yaml.safe_dump(cfg))
    a = tmp_path / "a" / "run"
    assert sert(["run", conf, "--out", a, "--quiet"], capsys)[0] == 0
    preds = {arm: (a / "eval" / arm / "predictions.jsonl").read_bytes() for arm in ("base", "rd", "rd_ft")}
    b = tmp_path / "elsewhere" / "deeper" / "run"
    b.parent.mkdir(parents=True)
    shutil.move(a, b)
    (b / "eval" / "rd" / "metrics.json").unlink()      # its evaluation stage resumes in the moved directory
    (b / "arms" / "rd_ft" / ".done.json").unlink()     # its training stage resumes: final/ is there already
    base_m = b / "eval" / "base" / "metrics.json"
    acc = json.loads(base_m.read_text())["acc_ci"]
    base_m.write_text(base_m.read_text()[:50])          # damaged: that stage resumes too (no decoding), not a stop
    rc, so, se = sert(["run", conf, "--out", b, "--quiet"], capsys)
    assert rc == 0, se
    assert "holds" not in se
    for arm, p in preds.items():
        assert (b / "eval" / arm / "predictions.jsonl").read_bytes() == p
    assert json.loads(base_m.read_text())["acc_ci"] == acc
    assert json.loads((b / "eval" / "rd" / "eval_config.json").read_text())["model_from_out"] == \
        "../../arms/rd/final"
    assert json.loads((b / "arms" / "rd_ft" / "train_summary.json").read_text())["fingerprint"] == \
        json.loads((b / "arms" / "rd_ft" / "train_config.json").read_text())["fingerprint"]  # not retrained


def test_a_librarys_own_oserror_is_one_line_exit_1():
    """An OSError without an errno (a library's message, e.g. a file it could not make sense of)."""
    err = environment_error(OSError("Can't load the configuration of 'x'\nmore detail"), "/run/x")
    assert err.status == 1 and str(err) == "/run/x: Can't load the configuration of 'x'; check the path and the " \
                                           "file system, then rerun"
