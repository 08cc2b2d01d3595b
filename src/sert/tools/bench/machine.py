"""The machine a run measured (CPU, GPU, versions, load) and the meters: wall time and peak memory."""
from __future__ import annotations

import gc
import os
import platform
import time
from pathlib import Path


def machine_info(device: str) -> dict:
    import torch  # lazy: start-up time (package doc)
    import transformers  # lazy: start-up time (package doc)

    cpu = platform.processor() or platform.machine()
    cpuinfo: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            k, _, v = line.partition(":")
            k = k.strip().lower()
            if k in ("model name", "cpu family", "model", "flags") and k not in cpuinfo:
                cpuinfo[k] = v.strip()
        cpu = cpuinfo.get("model name", cpu)
    except OSError:
        pass
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in cpuinfo.get("flags", "").split()]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        usable = os.cpu_count()
    info = {"cpu": cpu, "cpu_family_model": f"{cpuinfo.get('cpu family', '?')}/{cpuinfo.get('model', '?')}",
            "cpu_simd": simd, "cpu_cores": os.cpu_count(), "cpu_cores_usable": usable,
            "torch_threads": torch.get_num_threads(), "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") and torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "platform": platform.platform()}
    try:
        mem = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()
        info["ram_gib"] = round(int(mem[1]) / 2**20, 1)
    except (OSError, IndexError, ValueError):
        pass
    return info


def load_avg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


class PeakMemory:
    """Peak RSS (and peak CUDA allocation) over a ``with`` block.

    Linux: freed heap memory is returned to the OS (``malloc_trim``) and VmHWM is reset on
    entry through ``/proc/self/clear_refs`` ("5"), so the figure is the process's peak during
    the block. Elsewhere: ``getrusage`` max RSS, which cannot be
    reset (then ``reset`` is False and the figure is the process's lifetime peak).
    """

    def __init__(self, device: str = "cpu"):
        self.cuda = device.startswith("cuda")
        self.reset = False
        self.peak_rss_mb: float | None = None
        self.peak_gpu_mb: float | None = None

    def __enter__(self):
        gc.collect()
        try:  # hand memory freed by earlier arms back to the OS, so it is not counted again
            import ctypes
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.reset = True
        except OSError:
            self.reset = False
        if self.cuda:
            import torch  # lazy: start-up time (package doc)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        return self

    def __exit__(self, *exc):
        hwm = _status_kb("VmHWM") if self.reset else None
        if hwm is None:
            import resource
            hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
        self.peak_rss_mb = round(hwm / 1024, 1)
        if self.cuda:
            import torch  # lazy: start-up time (package doc)
            self.peak_gpu_mb = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        return False


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch  # lazy: start-up time (package doc)
        torch.cuda.synchronize()


class Timer:
    def __init__(self, device: str):
        self.device = device
        self.s = 0.0

    def __enter__(self):
        sync(self.device)
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync(self.device)
        self.s = time.perf_counter() - self.t0
        return False
