"""Is this the same run? One comparison for every stage that resumes into a directory.

A stage records what its outputs depend on (its identity: model, task, settings) beside them;
a rerun into the same directory compares the new identity with the recorded one and refuses,
in one line naming each difference, rather than mixing two runs' results. Where each stage
records it: ``mine_meta.json`` "settings" (and every path's ``settings`` key), ``eval_config.json``,
``train_config.json`` "fingerprint" (a hash of model, data and settings), ``config.yaml`` of a
``sert run``; ``teach_summary.json`` "settings" and the pipeline's stage markers' "identity" are
compared the same way but recompute instead of refusing (their outputs are rebuilt whole).
A local model is recorded also relative to the stage's directory (``eval_config.json``
"model_from_out", ``train_config.json`` "fingerprint_aliases"), so a run directory moved or
copied with its checkpoints is still the same run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .errors import SertError


def differences(old: dict, new: dict, keys: Iterable[str] | None = None) -> list[str]:
    """``key: old -> new`` for each key (``keys`` in their order, else both dicts' keys sorted) whose values differ."""
    keys = sorted(set(old) | set(new)) if keys is None else list(keys)
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def refuse_other(directory: str | Path, holds: str, old: dict, new: dict, advice: str,
                 keys: Iterable[str] | None = None, limit: int | None = None) -> None:
    """Raise ``{directory} {holds} (k: a -> b; ...); {advice}`` when ``old`` and ``new`` differ
    (on ``keys``; every difference named, or the first ``limit``)."""
    diff = differences(old, new, keys)
    if diff:
        shown = "; ".join(diff[:limit]) + ("; ..." if limit is not None and len(diff) > limit else "")
        raise SertError(f"{directory} {holds} ({shown}); {advice}")
