"""The benchmark's sections, its sizes per device (``--quick`` or not) and the targets it checks."""
from __future__ import annotations

import copy
import dataclasses

from ...errors import SertError


SECTIONS = ("matmul", "mining", "training", "eval")
EXTRA_SECTIONS = ("dtype", "mining_batch")  # on request (--only): fp32 vs the dtype choice; mining vs batch size
TARGETS = {"mining": 2.5, "training": 1.5, "eval": 3.0}  # issue 5: ours / baseline at least this


# ------------------------------------------------------------------ settings
@dataclasses.dataclass
class BenchSizes:
    mine_questions: int
    mine_batch: int          # questions per batch of ours (x 25 rows)
    mine_tokens: int         # new tokens per path
    train_steps: int
    train_batch: int
    eval_questions: int
    eval_batch: int
    eval_tokens: int
    matmul_n: int
    train_max_length: int = 512   # the naive baseline pads every batch to this (TrainConfig.max_length)
    mine_real: int = 1            # also time both mining arms with EOS allowed (real path lengths); 0: skip
    dtype_eval_tokens: int = 128  # dtype section: new tokens per answer of the untimed quality decode (EOS on)


PRESETS = {
    ("cpu", False): BenchSizes(8, 8, 64, 4, 4, 32, 32, 32, 2048),
    ("cpu", True): BenchSizes(2, 2, 8, 2, 2, 4, 4, 4, 512),
    ("cuda", False): BenchSizes(16, 16, 128, 30, 16, 16, 16, 64, 8192),
    ("cuda", True): BenchSizes(2, 2, 16, 3, 4, 4, 4, 8, 2048),
}


def sizes_for(device: str, quick: bool, overrides: dict | None = None) -> BenchSizes:
    s = copy.copy(PRESETS[("cuda" if device.startswith("cuda") else "cpu", bool(quick))])
    for k, v in (overrides or {}).items():
        if v is not None:
            if k == "mine_real":
                if int(v) not in (0, 1):
                    raise SertError(f"--mine-real: expected 0 or 1, got {v}")
            elif int(v) < 1:
                raise SertError(f"--{k.replace('_', '-')}: expected a positive integer, got {v}")
            setattr(s, k, int(v))
    if s.train_steps < 2:
        raise SertError("--train-steps: expected at least 2")
    return s
