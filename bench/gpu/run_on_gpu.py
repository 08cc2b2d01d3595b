"""On the GPU machine: reassemble the embedded model from the parts that bench/gpu/pack_model.py made,
verify it, install the carried wheels, and run a sert config, leaving metrics, predictions and the report
in the output folder (issue 25; the sequence of device calls: bench/gpu/README.md).

    python3 bench/gpu/run_on_gpu.py --stage                     # a call that carries one part, not the last
    python3 bench/gpu/run_on_gpu.py CONFIG [sert run options]   # the call with the last part and the wheels

Every call checks the parts it carries (``.gpu/part-K/``, against the manifest beside each) and keeps them
in ``--root`` (default ``.gpu/machine``: an ignored folder of the checkout, which the device keeps between
calls while the machine stays up, as it keeps every ignored output there); the call given a
CONFIG then needs all parts there, joins them, checks the whole file's SHA-256, installs ``.gpu/wheels/*.whl``
(``pip install --no-index --no-deps --target ROOT/site``), converts the model once as sert does
(``SERT_GGUF``, ``SERT_CACHE=ROOT/cache``: ``model: smollm2-135m`` works unchanged), and runs
``python -m sert run CONFIG --out ROOT/run [options]`` from this checkout (``PYTHONPATH=src``).

Into ``--out`` (default ``$OUT``, else ``./gpu_out``), flat, at most 8 files, each at most 16 MiB:
``gpu_job.json`` (steps, timings, checks, machine, exit status; rewritten after every step), ``job.log``
(sert's output), ``metrics.json`` (every ``eval/<arm>/metrics.json`` of the run, by arm), ``report.md``,
``run.tar.xz`` (the run directory without model weights, tokenizer copies, mined and rejected paths:
predictions, metrics, configs, summaries, selections) and ``mine_paths.jsonl.xz`` (the mined paths; thinned
as in ``notes/`` when the full file would be over 16 MiB).

Exit status: 0 done; 2 a part or wheel missing or damaged (one line says which; nothing runs); 3 the
model did not load; otherwise sert's own (124: stopped at ``--budget``). Standard library only, so that
it runs before anything is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import platform
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MIB = 1 << 20
FORMAT = "sert-gpu-parts/1"
OUT_FILE_LIMIT = 16 * MIB - 64 * 1024   # what comes back: each file at most 16 MiB (a little kept free)
WEIGHTS = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt")  # never copied back


class Refused(Exception):
    """A part or wheel missing or damaged: exit 2 with this one line."""


def sha256_file(p: Path, chunk: int = 8 * MIB) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


class Job:
    def __init__(self, a: argparse.Namespace):
        self.a = a
        self.root: Path = a.root
        self.out: Path = a.out
        self.t0 = time.time()
        self.info: dict = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv[1:], "steps": {}}
        self.out.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------ bookkeeping
    def log(self, msg: str) -> None:
        line = f"[gpu-job {time.time() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        with open(self.out / "job.log", "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def step(self, name: str, **kv) -> None:
        self.info["steps"][name] = kv
        self.save()

    def save(self) -> None:
        self.info["wall_s"] = round(time.time() - self.t0, 1)
        tmp = self.out / ".gpu_job.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=2) + "\n")
        os.replace(tmp, self.out / "gpu_job.json")

    # ------------------------------------------------------------ parts
    def manifest(self) -> dict:
        """The manifest carried beside a part in this call, else the one kept by an earlier call."""
        found = sorted(self.a.parts_dir.glob("part-*/manifest.json")) + [self.root / "parts" / "manifest.json"]
        for p in found:
            if p.is_file():
                m = json.loads(p.read_text())
                if m.get("format") != FORMAT:
                    raise Refused(f"{p}: not a manifest of {FORMAT} (made by another pack_model.py?)")
                return m
        raise Refused(f"no part carried in this call ({self.a.parts_dir}/part-K/ with its manifest.json) and "
                      f"none kept by an earlier one ({self.root / 'parts'}): carry .gpu/part-1 (pack_model.py)")

    def take_parts(self, m: dict) -> dict[int, Path]:
        """Check each part carried now against the manifest and keep it; returns index -> kept file."""
        keep = self.root / "parts"
        keep.mkdir(parents=True, exist_ok=True)
        old = keep / "manifest.json"
        if old.is_file() and json.loads(old.read_text()).get("sha256") != m["sha256"]:
            for f in keep.glob("model.part*"):  # parts of another model: not to be mixed in
                f.unlink()
        (keep / "manifest.json").write_text(json.dumps(m, indent=2) + "\n")
        have: dict[int, Path] = {}
        for e in m["parts"]:
            carried = self.a.parts_dir / e["dir"] / e["name"]
            kept = keep / e["name"]
            if carried.is_file():
                if carried.stat().st_size != e["bytes"] or sha256_file(carried) != e["sha256"]:
                    raise Refused(f"part {e['index']} of {len(m['parts'])} ({carried}) is damaged: its size or "
                                  f"SHA-256 differs from the manifest's; pack again and carry it again")
                if not (kept.is_file() and kept.stat().st_size == e["bytes"]):
                    shutil.copyfile(carried, kept.with_suffix(".tmp"))
                    os.replace(kept.with_suffix(".tmp"), kept)
                self.log(f"part {e['index']}/{len(m['parts'])}: carried, checked ({e['bytes']} bytes)")
                have[e["index"]] = kept
            elif kept.is_file():
                self.log(f"part {e['index']}/{len(m['parts'])}: kept by an earlier call")
                have[e["index"]] = kept
        return have

    def assemble(self, m: dict, have: dict[int, Path]) -> Path:
        n = len(m["parts"])
        missing = [e["index"] for e in m["parts"] if e["index"] not in have]
        if missing:
            raise Refused(f"part(s) {', '.join(map(str, missing))} of {n} missing: not carried in this call and "
                          f"not kept by an earlier one (the machine goes back 30 s after a call: make the calls "
                          f"back to back, or carry the missing part again)")
        dest = self.root / "model" / m["file"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(".tmp")
        h = hashlib.sha256()
        with open(tmp, "wb") as g:
            for e in m["parts"]:
                p = have[e["index"]]
                ph = hashlib.sha256()
                with open(p, "rb") as f:
                    while b := f.read(8 * MIB):
                        g.write(b)
                        h.update(b)
                        ph.update(b)
                if ph.hexdigest() != e["sha256"]:  # a kept part damaged since it was checked
                    tmp.unlink()
                    p.unlink()
                    raise Refused(f"part {e['index']} of {n} (kept in {p}) is damaged: carry it again")
        if h.hexdigest() != m["sha256"] or tmp.stat().st_size != m["bytes"]:
            tmp.unlink()
            raise Refused(f"the joined {m['file']} does not match the manifest's SHA-256: pack again")
        os.replace(tmp, dest)
        return dest

    # ------------------------------------------------------------ wheels
    def install_wheels(self, m: dict) -> list[str]:
        site = self.root / "site"
        if not m.get("wheels"):
            return []
        wdir = self.a.parts_dir / "wheels"
        todo = []
        for w in m["wheels"]:
            p = wdir / w["name"]
            done = site / f".{w['name']}.installed"
            if not p.is_file():
                if done.exists():  # installed by an earlier call of this machine
                    continue
                raise Refused(f"wheel {w['name']} not carried ({p}): carry .gpu/wheels in this call")
            if sha256_file(p) != w["sha256"]:
                raise Refused(f"wheel {p} is damaged: its SHA-256 differs from the manifest's")
            todo.append(p)
        if todo:
            cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                   "--no-cache-dir", "--upgrade", "--target", str(site), *map(str, todo)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise Refused(f"pip could not install {', '.join(p.name for p in todo)}: "
                              f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
            for p in todo:
                (site / f".{p.name}.installed").touch()
        return [w["name"] for w in m["wheels"]]

    # ------------------------------------------------------------ running sert
    def env(self, gguf: Path) -> dict:
        py = [str(REPO / "src"), str(self.root / "site")]
        if os.environ.get("PYTHONPATH"):
            py.append(os.environ["PYTHONPATH"])
        return {**os.environ, "PYTHONPATH": os.pathsep.join(py), "SERT_GGUF": str(gguf),
                "SERT_CACHE": str(self.root / "cache"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}

    def sub(self, cmd: list[str], env: dict, limit: float) -> tuple[int, float]:
        """Run ``cmd`` with its output appended to job.log; (exit status, seconds). At ``limit`` seconds
        its process group is stopped (TERM, then KILL) and the status is 124."""
        t = time.time()
        with open(self.out / "job.log", "a", encoding="utf-8") as log:
            log.write(f"$ {' '.join(cmd)}\n")
            log.flush()
            p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
            try:
                rc = p.wait(timeout=max(1.0, limit))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGTERM)
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
                log.write(f"[gpu-job] stopped after {limit:.0f} s (--budget)\n")
                rc = 124
        return rc, round(time.time() - t, 1)

    def left(self) -> float:
        return self.a.budget - (time.time() - self.t0) - self.a.reserve

    # ------------------------------------------------------------ what comes back
    def collect(self, run: Path) -> None:
        if (run / "report.md").is_file():
            shutil.copyfile(run / "report.md", self.out / "report.md")
        metrics = {p.parent.name: json.loads(p.read_text()) for p in sorted((run / "eval").glob("*/metrics.json"))}
        if metrics:
            (self.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        paths = run / "mine" / "paths.jsonl"
        if paths.is_file():
            self.info["mine_paths"] = self._paths(paths)
        if run.is_dir():
            files = sorted(p for p in run.rglob("*") if p.is_file() and self._wanted(p.relative_to(run)))
            dropped = self._tar(run, files)
            if dropped:
                self.info["run_tar_dropped"] = dropped
        out_files = {}
        for p in sorted(self.out.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                if p.name == "job.log" and p.stat().st_size > OUT_FILE_LIMIT:  # keep its end
                    with open(p, "rb") as f:
                        f.seek(-OUT_FILE_LIMIT + 4096, os.SEEK_END)
                        tail = f.read()
                    p.write_bytes(b"[... cut: only the end of the log came back]\n" + tail)
                out_files[p.name] = p.stat().st_size
        self.info["out_files"] = out_files

    @staticmethod
    def _wanted(rel: Path) -> bool:
        """What run.tar.xz holds: not model weights or training state, not the tokenizer copies beside
        each checkpoint, not the mined paths (mine_paths.jsonl.xz) and not the filter's rejected paths
        (``sert filter`` makes them again from the mined paths)."""
        name = rel.name
        return not (name.endswith(WEIGHTS) or name.startswith(("optimizer", "scheduler", "rng_state", ".sert"))
                    or any(part.startswith("checkpoint-") for part in rel.parts)
                    or name in ("tokenizer.json", "rejected.jsonl") or rel.as_posix() == "mine/paths.jsonl")

    def _paths(self, paths: Path) -> str:
        """The run's mined paths as mine_paths.jsonl.xz; thinned (sert.filters.thin_path: what the filter
        reads, without the per-token lists) when the full file would not come back."""
        dest = self.out / "mine_paths.jsonl.xz"
        with open(paths, "rb") as f, lzma.open(dest, "wb", preset=1) as g:
            shutil.copyfileobj(f, g, 8 * MIB)
        if dest.stat().st_size <= OUT_FILE_LIMIT:
            return "full"
        sys.path.insert(0, str(REPO / "src"))
        from sert.filters import thin_path

        with open(paths, encoding="utf-8") as f, lzma.open(dest, "wt", encoding="utf-8", preset=6) as g:
            for line in f:
                if line.strip():
                    g.write(json.dumps(thin_path(json.loads(line)), ensure_ascii=False) + "\n")
        if dest.stat().st_size <= OUT_FILE_LIMIT:
            return "thinned"
        dest.unlink()
        return "left out (over 16 MiB even thinned)"

    def _tar(self, run: Path, files: list[Path]) -> list[str]:
        """run.tar.xz of ``files``; when it would not come back (over 16 MiB), the largest files other than
        metrics, predictions and the report are left out until it fits. Returns what was left out."""
        dropped: list[str] = []
        vital = ("metrics.json", "predictions.jsonl", "report.md", "config.yaml", "stages.json")
        while True:
            dest = self.out / "run.tar.xz"
            with tarfile.open(dest, "w:xz", preset=6) as t:
                for p in files:
                    t.add(p, arcname=f"run/{p.relative_to(run)}")
            if dest.stat().st_size <= OUT_FILE_LIMIT:
                return dropped
            spare = sorted((p for p in files if p.name not in vital), key=lambda p: p.stat().st_size)
            if not spare:
                dest.unlink()
                return dropped + ["run.tar.xz (over 16 MiB even with only metrics and predictions)"]
            big = spare[-1]
            files.remove(big)
            dropped.append(str(big.relative_to(run)))


def machine() -> dict:
    info = {"host": platform.node(), "python": sys.version.split()[0]}
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                           capture_output=True, text=True, timeout=20)
        info["gpu"] = r.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        info["gpu"] = None
    return info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 usage="run_on_gpu.py [options] (--stage | CONFIG [sert run options])")
    ap.add_argument("--stage", action="store_true", help="only check and keep the parts carried in this call")
    ap.add_argument("--parts-dir", type=Path, default=REPO / ".gpu", help="where carried parts are (.gpu/)")
    ap.add_argument("--root", type=Path, default=Path(os.environ.get("SERT_GPU_ROOT", REPO / ".gpu" / "machine")),
                    help="kept parts, model, wheels' site, sert cache and the run (default .gpu/machine)")
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "gpu_out"),
                    help="what comes back (default $OUT)")
    ap.add_argument("--budget", type=float, default=570.0,
                    help="seconds this job may take in all (default 570, under a call's 600)")
    ap.add_argument("--reserve", type=float, default=40.0, help="seconds kept for collecting the outputs")
    ap.add_argument("--show-tail", type=int, default=60, help="lines of job.log to print at the end (60)")
    ap.add_argument("--fresh", action="store_true",
                    help="remove ROOT/run first (default: sert run resumes a run an earlier call left there)")
    ap.add_argument("config", nargs="?", help="a shipped config name (e.g. cpu/strategyqa_smollm2_full) or a YAML file")
    ap.add_argument("sert_args", nargs=argparse.REMAINDER, help="more options for sert run (--set k=v ...)")
    a = ap.parse_args(argv)
    if a.stage == bool(a.config):
        ap.error("give either --stage or a CONFIG to run")
    a.parts_dir, a.root, a.out = a.parts_dir.absolute(), a.root.absolute(), a.out.absolute()
    job = Job(a)
    job.info["machine"] = machine()
    try:
        m = job.manifest()
        have = job.take_parts(m)
        job.step("parts", have=sorted(have), of=len(m["parts"]), file=m["file"], sha256=m["sha256"])
        if a.stage:
            job.log(f"kept parts {sorted(have)} of {len(m['parts'])} in {a.root / 'parts'}")
            return 0
        t = time.time()
        gguf = job.assemble(m, have)
        job.step("assemble", file=str(gguf), bytes=gguf.stat().st_size, sha256_ok=True, s=round(time.time() - t, 1))
        job.log(f"model {m['file']}: {m['bytes']} bytes joined from {len(have)} part(s), SHA-256 checked")
        t = time.time()
        job.step("wheels", installed=job.install_wheels(m), s=round(time.time() - t, 1))
    except Refused as e:
        print(f"run_on_gpu: {e}", file=sys.stderr, flush=True)
        job.info["refused"] = str(e)
        job.info["exit"] = 2
        job.save()
        return 2

    env = job.env(gguf)
    run = a.root / "run"
    if a.fresh and run.exists():
        shutil.rmtree(run)
    vfile = a.root / "job_info.json"
    vfile.unlink(missing_ok=True)
    sert_argv = ["run", a.config, "--out", str(run), *[x for x in a.sert_args if x != "--"]]
    job.log(f"model, then sert {' '.join(sert_argv)} (up to {job.left():.0f} s)")
    rc, s = job.sub([sys.executable, str(REPO / "bench" / "gpu" / "sert_job.py"), str(vfile), *sert_argv],
                    env, job.left())
    ready = json.loads(vfile.read_text()) if vfile.is_file() else {}
    job.info["versions"] = ready
    job.step("load_model", ok="model_dir" in ready, s=ready.get("model_ready_s"), error=ready.get("error"))
    job.step("sert_run", argv=sert_argv, exit=rc, s=s)
    if rc == 3 and "model_dir" not in ready:
        job.log(f"the model did not load ({ready.get('error', 'no report')}); job.log has the traceback")
    job.log(f"sert run: exit {rc} after {s} s (model ready in {ready.get('model_ready_s')} s)")
    job.collect(run)
    job.info["exit"] = rc
    job.save()
    job.log(f"out: {', '.join(f'{k} ({v} B)' for k, v in job.info['out_files'].items())}")
    tail = (a.out / "job.log").read_text(encoding="utf-8", errors="replace").splitlines()[-a.show_tail:]
    print("---- the end of job.log\n" + "\n".join(tail), flush=True)  # what the device call's reply shows
    return rc


if __name__ == "__main__":
    sys.exit(main())
