"""Stages 2-3 and the Finetune arm: supervised training on (prompt, completion) pairs.

SERT §II-B (self-training on the selected latent paths), §II-C (reasoning
distillation on teacher rationales) and the Finetune baseline of Table II all
reduce to one recipe: causal-LM cross-entropy on the completion only (prompt
tokens masked out with -100, EOS appended), Adam lr 3e-4, batch 8, 20 epochs.

Inputs (``--data``):
  --stage self      the filter stage's ``selected.jsonl`` (question, answer, path, optional weight)
  --stage distill   the teach stage's ``rationales.jsonl`` (question, answer, rationale)
  --stage finetune  a task name (its train split) or a JSONL/CSV file with question, answer
  --stage joint     several files, ``--data selected.jsonl --data rationales.jsonl``: one training on
                    their union, each file's records built as their own stage's targets (the method
                    summary's joint optimisation; the loss is docs/METHOD.md's, below)
A directory is accepted for self/distill/joint and means the stage's file inside it.

Loss: the completion tokens' cross-entropy, summed and divided by the batch's completion tokens
(transformers' own causal-LM loss). With per-example weights (``use_weights``: the selection's
``filter.confidence_weight``; ``self_weight`` for the self part of a joint mix) each example's token
losses are multiplied by its weight; weights are rescaled per data source so that their mean over
that source's completion tokens is 1 (the learning rate keeps its meaning), then the self source is
multiplied by ``self_weight`` when it trains beside another source. All weights 1 is the plain loss.
With ``head_on_labels`` (the default) the LM head and the loss run on the completion positions only:
the same loss without computing the prompt positions' logits (issue 25: ~1.3x on a CPU).

Outputs under ``--out DIR``:
  DIR/final/              HF checkpoint (model + tokenizer + README.md model card); LoRA is
                          merged, so evaluation loads a plain model. Written to a temp dir, renamed.
  DIR/epoch-E/            with ``train.eval_epochs``: the model at the end of epoch E, the same way
                          (learning curves); written before the Trainer's checkpoint of that step.
  DIR/checkpoints/        Trainer checkpoints; a rerun resumes from the last one.
  DIR/train_config.json   what was asked (model, stage, data, settings) + a fingerprint;
                          resuming with a different fingerprint is refused.
  DIR/train_summary.json  loss curve, tokens (all processes), wall time, throughput; precision and
                          why; world size, per-device batch, accumulation, effective batch, lr
                          schedule, warm-up, max_grad_norm.

The loop is transformers' Trainer, so ``accelerate launch`` / ``torchrun -m sert train``
scale it over processes with no code of ours (only rank 0 writes DIR's own files);
``train.batch_size`` stays the effective batch (see :func:`batch_plan`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

from .config import TrainConfig, check, to_dict
from .errors import SertError, did_you_mean
from .filters import weight_stats
from .identity import refuse_other
from .io import (RunLock, atomic_write_json, atomic_write_text, ensure_dir, iter_jsonl_numbered, read_json,
                 reads_utf8)
from .log import get as _get_logger
from .models import (_not_found, avoid_cudnn_attention, load_tokenizer, pick_placement, resolve_model,
                     unreadable_weights)
from .tasks import get_task, user_task
from .templates import distillation_target, finetune_target, self_training_target
from .tokens import context_length, encode_prompts, fit_prompt, n_special_prefix
from .version import __version__

# torch, transformers and peft are imported inside the functions that use them: `sert --help` and
# the stages that do not train import this module, and must not wait seconds for them.
log = _get_logger(__name__)

STAGES = ("finetune", "self", "distill", "joint")
STAGE_FILES = {"self": "selected.jsonl", "distill": "rationales.jsonl"}
_FIELDS = {"finetune": ("question", "answer"), "self": ("question", "answer", "path"),
           "distill": ("question", "answer", "rationale")}
TRAINING_INFO = "sert_training.json"  # written into every checkpoint this module saves; read by sert.evaluate


# ------------------------------------------------------------------ data
def record_stage(r: dict) -> str:
    """Which stage's target a record of a joint training makes: self (it has a ``path``), distill (a
    ``rationale``), else finetune."""
    return "self" if "path" in r else "distill" if "rationale" in r else "finetune"


def build_pairs(stage: str, records: Iterable[dict]) -> list[dict]:
    """Training pairs ``{prompt, completion, weight, source}`` for ``stage`` from data records.

    ``weight`` is the record's ``weight`` field (default 1.0); it is only used when
    ``TrainConfig.use_weights`` is set. ``source``: the stage whose target the pair is (a joint
    training mixes self and distill pairs; :func:`record_stage` tells them apart).
    """
    if stage not in STAGES:
        raise SertError(f"unknown stage '{stage}'{did_you_mean(stage, STAGES)}; expected one of {', '.join(STAGES)}")
    out = []
    for n, r in enumerate(records, 1):
        kind = record_stage(r) if stage == "joint" and isinstance(r, dict) else stage
        if not isinstance(r, dict):
            raise SertError(f"record {n}: expected an object with {', '.join(_FIELDS.get(stage, _FIELDS['self']))}")
        for k in _FIELDS[kind]:
            v = r.get(k)
            if v is None or (isinstance(v, str) and not v.strip()):
                raise SertError(f"record {n}: missing field '{k}' for --stage {kind} "
                                f"(expected {', '.join(_FIELDS[kind])})")
        q, a = str(r["question"]), str(r["answer"])
        if kind == "self":
            prompt, completion = self_training_target(q, str(r["path"]), a, own_answer=r.get("prompt") == "train")
        elif kind == "distill":
            prompt, completion = distillation_target(q, str(r["rationale"]), a)
        else:
            prompt, completion = finetune_target(q, a)
        w = r.get("weight", 1.0)
        try:
            w = float(1.0 if w is None else w)
        except (TypeError, ValueError):
            raise SertError(f"record {n}: weight must be a number, got {w!r}") from None
        if not math.isfinite(w) or w < 0:
            raise SertError(f"record {n}: weight must be a finite number >= 0, got {w}")
        out.append({"prompt": prompt, "completion": completion, "weight": w, "source": kind})
    return out


def load_records(stage: str, data: str | os.PathLike | Sequence[dict], limit: int | None = None
                 ) -> tuple[list[dict], str]:
    """The stage's data records and a description of where they came from. ``joint``: ``data`` is a list
    of files (or directories) of the stages it mixes, each checked as its own stage's file."""
    if _is_file_list(data):
        if len(data) == 1 and stage != "joint":
            data = data[0]
        elif stage != "joint":
            raise SertError(f"--data given {len(data)} times: only --stage joint trains on several files")
        else:
            return _joint_records(data, limit)
    if stage == "joint":
        raise SertError("--stage joint: give every file it mixes, e.g. --data selected.jsonl --data rationales.jsonl")
    if not isinstance(data, (str, os.PathLike)):
        recs, src = list(data), "<records>"
    else:
        p = Path(data)
        if p.is_dir():
            if stage not in STAGE_FILES:
                raise SertError(f"--data {p}: a directory is only accepted for --stage self/distill")
            p = p / STAGE_FILES[stage]
        if stage == "finetune" and not p.is_file():
            exs = get_task(str(data)).examples("train", limit)
            return [{"question": e.question, "answer": e.answer} for e in exs], f"task {data} (train split)"
        if not p.is_file():
            hint = f" (the {STAGE_FILES[stage]} written by the previous stage)" if stage in STAGE_FILES else ""
            raise SertError(f"--data {p}: file not found{hint}")
        if stage == "finetune":
            recs = [{"question": e.question, "answer": e.answer} for e in user_task(p).examples("train")]
        else:
            numbered = list(iter_jsonl_numbered(p))
            _check_records(stage, p, numbered)
            recs = [r for _, r in numbered]
        src = str(p)
    if limit is not None:
        if limit < 1:
            raise SertError(f"--limit must be a positive integer, got {limit}")
        recs = recs[:limit]
    if not recs:
        raise SertError(f"--data {src}: no training records")
    return recs, src


def _is_file_list(data) -> bool:
    return isinstance(data, (list, tuple)) and bool(data) and all(isinstance(d, (str, os.PathLike)) for d in data)


def _joint_records(files, limit: int | None) -> tuple[list[dict], str]:
    """The records of every file of a joint training (each file's stage told by its records' fields)."""
    recs, srcs = [], []
    for f in files:
        p = Path(f)
        if p.is_dir():
            found = [p / n for n in STAGE_FILES.values() if (p / n).is_file()]
            if len(found) != 1:
                raise SertError(f"--data {p}: expected a directory with selected.jsonl or rationales.jsonl")
            p = found[0]
        if not p.is_file():
            raise SertError(f"--data {p}: file not found")
        numbered = list(iter_jsonl_numbered(p))
        part = [r for _, r in numbered]
        if not part:
            raise SertError(f"--data {p}: no training records")
        kind = record_stage(part[0]) if isinstance(part[0], dict) else "self"
        if kind == "finetune":
            raise SertError(f"{p}: --stage joint mixes selected paths (field 'path') and teacher rationales "
                            "(field 'rationale'); this file has neither")
        _check_records(kind, p, numbered)
        recs += part[:limit] if limit is not None else part
        srcs.append(str(p))
    return recs, " + ".join(srcs)


@reads_utf8("path")
def _check_records(stage: str, path: Path, numbered: list[tuple[int, dict]]) -> None:
    """Every record of a data file (with its line number) has the stage's fields with usable types; errors
    name file:line."""
    for n, r in numbered:
        if stage == "self" and "token_ids" in r and not isinstance(r.get("path"), str):
            raise SertError(f"{path}:{n}: a mined path (sert mine's paths.jsonl), not a selected one: --stage self "
                            f"trains on the filter's output; run 'sert filter {path}' and pass its selected.jsonl")
        for k in _FIELDS[stage]:
            v = r.get(k)
            if v is None or (isinstance(v, str) and not v.strip()):
                raise SertError(f"{path}:{n}: missing field '{k}' for --stage {stage} "
                                f"(expected {', '.join(_FIELDS[stage])})")
            if not isinstance(v, (str, int, float)) or isinstance(v, bool):
                raise SertError(f"{path}:{n}: field '{k}' must be a string, got {type(v).__name__}")
        w = r.get("weight")
        if w is not None and (not isinstance(w, (int, float)) or isinstance(w, bool)):
            raise SertError(f"{path}:{n}: field 'weight' must be a number, got {type(w).__name__}")
        if w is not None and not (math.isfinite(w) and w >= 0):
            raise SertError(f"{path}:{n}: field 'weight' must be a finite number >= 0, got {w}")


def _warn_unused_weights(pairs: list[dict], cfg: TrainConfig, source) -> None:
    """One stderr line when the data carry per-example weights (filter.confidence_weight) that
    training will ignore because ``use_weights`` is off."""
    if not cfg.use_weights and len({p["weight"] for p in pairs}) > 1:
        log.warning(f"{source}: records carry different 'weight' values (filter.confidence_weight) but "
                    "train.use_weights is false, so they are ignored; pass --use-weights true to use them")


def tokenize_pairs(pairs: list[dict], tok, max_length: int) -> tuple[list[dict], int]:
    """Token ids and labels per pair; returns (features, number truncated).

    Prompt and completion are tokenized apart and concatenated, so the mask
    boundary is exact and the prompt ids equal what evaluation feeds the model.
    Over-long examples lose the start of the prompt first (the answer side is
    what is learned; a leading BOS stays), then the end of the completion.
    """

    prompts = encode_prompts(tok, [p["prompt"] for p in pairs])  # the convention of mining and evaluation
    comps = tok([p["completion"] for p in pairs], add_special_tokens=False)["input_ids"]
    eos = tok.eos_token_id
    if eos is None:
        raise SertError("the tokenizer has no EOS token; cannot mark the end of a target")
    feats, truncated = [], 0
    for p, c, pair in zip(prompts, comps, pairs):
        c = list(c) + [eos]
        if len(p) + len(c) > max_length:
            truncated += 1
            keep_p = max(0, max_length - len(c))
            p = fit_prompt(p, keep_p, n_special_prefix(tok))[0] if keep_p else []
            c = c[: max_length - len(p)]
        feats.append({"input_ids": list(p) + c, "labels": [-100] * len(p) + c, "weight": pair["weight"],
                      "source": pair.get("source", "self")})
    return feats, truncated


def _quiet_trainer_logs(trainer) -> None:
    """Drop the Trainer's printing of raw log dicts (``PrinterCallback`` without a terminal, the
    progress bar's ``on_log`` with one); ``StepLog`` prints them as one readable line."""
    from transformers import PrinterCallback, ProgressCallback

    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        class BarOnly(ProgressCallback):
            def on_log(self, args, state, control, logs=None, **kw):
                return None

        trainer.add_callback(BarOnly())


def pad_multiple(device: str) -> int:
    """Padded batch lengths are rounded up to this: 8 on CUDA (tensor cores), 1 elsewhere."""
    return 8 if str(device).startswith("cuda") else 1


class PadCollator:
    """Right-pads a batch to its longest member (no fixed-length padding); counts tokens.

    ``multiple`` > 1 rounds the padded length up to a multiple of it (8 on CUDA: tensor-core
    aligned shapes, and 8x fewer distinct shapes for kernels that set up per shape)."""

    def __init__(self, pad_id: int, use_weights: bool = False, multiple: int = 1):
        self.pad_id, self.use_weights, self.multiple = pad_id, use_weights, max(1, int(multiple))
        self.real_tokens = self.padded_tokens = self.loss_tokens = 0

    def __call__(self, feats: list[dict]) -> dict:
        import torch

        n = max(len(f["input_ids"]) for f in feats)
        n = -(-n // self.multiple) * self.multiple
        ids = torch.full((len(feats), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(feats), n), -100, dtype=torch.long)
        mask = torch.zeros((len(feats), n), dtype=torch.long)
        for i, f in enumerate(feats):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            mask[i, :k] = 1
        self.real_tokens += int(mask.sum())
        self.padded_tokens += ids.numel()
        self.loss_tokens += int((labels[:, 1:] != -100).sum())
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
        if self.use_weights:
            batch["weight"] = torch.tensor([float(f["weight"]) for f in feats])
        return batch


def token_losses(logits, labels):
    """Per-token cross-entropy of the completion tokens (0 elsewhere) and the mask of those tokens, both
    ``[batch, length - 1]``: position t predicts token t + 1, as transformers' causal-LM loss shifts."""
    import torch.nn.functional as F

    lg = logits[:, :-1, :].float()
    lb = labels[:, 1:]
    ce = F.cross_entropy(lg.reshape(-1, lg.size(-1)), lb.reshape(-1), ignore_index=-100, reduction="none")
    return ce.view(lb.shape), (lb != -100)


def weighted_loss(logits, labels, weights, n_tokens=None):
    """(D) The weighted causal-LM loss: sum over examples of weight x the example's summed completion-token
    cross-entropy, divided by ``n_tokens`` (the completion tokens of the optimizer step's whole batch,
    as transformers counts them; default: this batch's). Weights 1 give transformers' own loss.

    Weights are rescaled per data source before training (:func:`normalize_weights`), so the loss
    scale and the learning rate keep their meaning and an example's weight does not depend on who
    shares its batch."""
    ce, mask = token_losses(logits, labels)
    per_example = (ce * mask).sum(1)
    denom = mask.sum() if n_tokens is None else n_tokens
    return (weights.to(per_example.device).float() * per_example).sum() / denom


def normalize_weights(feats: list[dict], self_weight: float = 1.0) -> dict:
    """Rescale the examples' ``weight`` in place, per ``source``: the mean weight over that source's
    completion tokens becomes 1; then, when several sources train together, the ``self`` source's
    weights are multiplied by ``self_weight`` (lambda). Returns the weight distribution per source."""

    by_source: dict[str, list[dict]] = {}
    for f in feats:
        by_source.setdefault(f.get("source", "self"), []).append(f)
    stats = {}
    for src, group in by_source.items():
        toks = [sum(1 for t in f["labels"][1:] if t != -100) for f in group]
        mass = sum(f["weight"] * t for f, t in zip(group, toks))
        if mass <= 0:
            raise SertError(f"use_weights: every {src} example has weight 0")
        scale = sum(toks) / mass * (self_weight if src == "self" and len(by_source) > 1 else 1.0)
        for f in group:
            f["weight"] = f["weight"] * scale
        stats[src] = weight_stats([f["weight"] for f in group])
    return stats


def completion_positions(labels):
    """``[batch, length]`` bool: the positions whose next token is a completion (loss) token; position t
    predicts token t + 1, as transformers' causal-LM loss shifts."""
    import torch

    sel = torch.zeros_like(labels, dtype=torch.bool)
    sel[:, :-1] = labels[:, 1:] != -100
    return sel


def _head_on(model, sel):
    """Run ``model``'s output head (the LM head) on the positions ``sel`` only, as one row ``[1, N, hidden]``:
    a forward pre-hook on ``get_output_embeddings()``; returns its handle (None when the model has no such
    head). The prompt positions' logits are never computed (on CommonsenseQA's rationales about half the
    positions, and the largest tensor of a step: ``[batch, length, vocabulary]``). Whatever the model does
    after its head (scaling, soft-capping, the fp32 cast) is per position and applies unchanged."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return None

    def pre(_module, args):
        h = args[0]
        if h.dim() != 3 or tuple(h.shape[:2]) != tuple(sel.shape):
            return None  # not the full sequence: left alone, the loss then reads the full logits
        return (h[sel].unsqueeze(0), *args[1:])

    return head.register_forward_pre_hook(pre)


def selected_loss(logits, labels, sel, weights=None, n_tokens=None):
    """The causal-LM loss from the logits of the positions ``sel`` only (:func:`completion_positions`;
    ``logits`` ``[1, N, vocab]`` in ``sel``'s row-major order, or the full ``[batch, length, vocab]``):
    the summed cross-entropy of the completion tokens, each weighted by its example's weight (none: 1),
    divided by ``n_tokens`` (default: this batch's completion tokens) -- :func:`weighted_loss`'s value."""
    import torch
    import torch.nn.functional as F

    if logits.shape[:2] == labels.shape:  # the head ran on every position
        logits = logits[sel].unsqueeze(0)
    target = torch.roll(labels, -1, dims=1)[sel]  # the token each selected position predicts
    ce = F.cross_entropy(logits[0].float(), target, reduction="none")
    if weights is not None:
        ce = ce * weights.to(ce.device).float()[:, None].expand(sel.shape)[sel]
    return ce.sum() / (sel.sum() if n_tokens is None else n_tokens)


def _trainer_classes():
    from transformers import Trainer

    class SertTrainer(Trainer):
        """Trainer whose loss may weight each example (its ``weight`` batch field): :func:`weighted_loss`
        over the step's completion tokens, which transformers counts over the accumulated micro-batches
        (and processes) as for its own loss; with all weights 1 the gradients are the plain Trainer's.
        With ``head_on_labels`` the LM head and the loss run on the completion positions only
        (:func:`_head_on`): the same loss, without the prompt positions' logits."""
        head_on_labels = False

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            weights = inputs.pop("weight", None)
            labels = inputs.pop("labels")
            sel = completion_positions(labels)
            hook = _head_on(self.accelerator.unwrap_model(model), sel) if self.head_on_labels else None
            try:
                outputs = model(**inputs)
            finally:
                if hook is not None:
                    hook.remove()
            loss = selected_loss(outputs.logits, labels, sel, weights, num_items_in_batch)
            if num_items_in_batch is not None and self.args.average_tokens_across_devices \
                    and self.accelerator.num_processes > 1:
                loss = loss * self.accelerator.num_processes  # DDP averages; the count is the global one
            # normalised over the whole accumulated batch when the Trainer counted it: no further division
            self.loss_is_scaled_for_ga = num_items_in_batch is not None
            return (loss, outputs) if return_outputs else loss

    return Trainer, SertTrainer


# ------------------------------------------------------------------ running
# TrainConfig keys that change how a training runs or is logged, not what it learns: the training
# fingerprint leaves them out and a pipeline run counts them as operational (pipeline.OPERATIONAL_KEYS),
# so both a training and a run directory resume across them.
OPERATIONAL = ("logging_steps", "save_total_limit", "report_to", "head_on_labels", "attention", "compile")


def _fingerprint(model_name: str, stage: str, pairs: list[dict], cfg: TrainConfig) -> str:
    h = hashlib.sha256()
    skip = {*OPERATIONAL, "curve_arms"}  # curve_arms: which epoch snapshots are evaluated, not what is learned
    # keys added later, at the value they stand for when absent: older runs keep their fingerprint
    skip |= {k for k, v in (("self_weight", 1.0), ("eval_epochs", None)) if getattr(cfg, k) in (v, [])}
    if cfg.max_grad_norm == 1.0:  # made explicit later at the value it always had: old runs keep their fingerprint
        skip.add("max_grad_norm")
    if cfg.seeds is None:  # added later; one training run has one seed (train.seed)
        skip.add("seeds")
    h.update(json.dumps({"model": model_name, "stage": stage,
                         "cfg": {k: v for k, v in to_dict(cfg).items() if k not in skip}},
                        sort_keys=True, default=str).encode())
    for p in pairs:  # a pair's source is its stage's own unless joint (older runs keep their fingerprint)
        h.update(json.dumps({k: v for k, v in p.items() if k != "source" or stage == "joint"},
                            sort_keys=True).encode())
    return h.hexdigest()[:16]


def _fingerprints(model_name: str, stage: str, pairs: list[dict], cfg: TrainConfig, out: Path) -> list[str]:
    """The run's fingerprint (:func:`_fingerprint`, the model as given), then, for a local model, the same
    with the model as an absolute path and as a path relative to ``out``: one of them still matches when
    the command is run from elsewhere or the run directory was moved or copied with its checkpoints."""
    fps = [_fingerprint(model_name, stage, pairs, cfg)]
    p = Path(str(model_name))
    if p.exists():
        at = p.resolve()
        fps += [_fingerprint(str(at), stage, pairs, cfg),
                _fingerprint(os.path.relpath(at, Path(out).resolve()), stage, pairs, cfg)]
    return fps


def _same_training(recorded: dict, fps: list[str]) -> bool:
    """Whether train_config.json's fingerprints (``recorded``) name the training of ``fps`` (:func:`_fingerprints`)."""
    return bool({recorded.get("fingerprint"), *recorded.get("fingerprint_aliases", [])} & set(fps))


def check_report_to(report_to: str) -> list[str]:
    """The Trainer integrations ``train.report_to`` names; an unknown one, or TensorBoard when it is not
    installed, is refused in one line (checked before anything runs: by run_train and sert run)."""
    from transformers.integrations import integration_utils as iu

    names = [n.strip() for n in str(report_to).split(",") if n.strip() not in ("", "none")]
    unknown = [n for n in names if n not in iu.INTEGRATION_TO_CALLBACK]
    if unknown:
        raise SertError(f"train.report_to: unknown logger {unknown[0]!r}"
                        f"{did_you_mean(unknown[0], iu.INTEGRATION_TO_CALLBACK)}; expected none, tensorboard "
                        "or another Trainer integration")
    if "tensorboard" in names and not iu.is_tensorboard_available():
        raise SertError("train.report_to: tensorboard is not installed (pip install tensorboard)")
    return names


def _reporting(report_to: str, log_dir: Path) -> tuple[list[str] | str, list]:
    """``train.report_to`` for the Trainer: (integration names, callbacks). TensorBoard comes as a
    callback writing to ``log_dir`` (the arm's directory: the Trainer's default lies under the
    checkpoints, which a finished run deletes)."""
    from transformers.integrations import integration_utils as iu

    names = check_report_to(report_to)
    if "tensorboard" not in names:
        return names or "none", []
    cb = iu.TensorBoardCallback()
    cb.logging_dir = str(log_dir)
    return [n for n in names if n != "tensorboard"] or "none", [cb]


def training_precision(cfg: TrainConfig, device: str, dtype: str | None) -> tuple[str, str]:
    """Mixed precision for training (master weights stay fp32: bf16/fp16 are autocast) and why:
    ('bf16' | 'fp16' | 'fp32', reason). An explicit ``--dtype`` wins; under ``--dtype auto``,
    ``train.bf16`` true/false decides, and its ``auto`` takes the ``--dtype auto`` choice
    (:func:`sert.models.pick_placement`: bf16 on a GPU, on a CPU where bf16 is measured faster)."""

    short = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}
    b = str(cfg.bf16).lower()
    if dtype in (None, "auto") and b in ("true", "false"):
        pick_placement(device)  # CUDA asked for and missing: one line
        return ("bf16", "train.bf16: true") if b == "true" else ("fp32", "train.bf16: false")
    place = pick_placement(device, dtype)  # refuses unknown dtypes and float16 on a CPU
    return short[place.dtype], place.reason


def batch_plan(cfg: TrainConfig, world: int) -> dict:
    """``train.batch_size`` is the effective (global) batch: split over ``world`` processes and
    ``grad_accum`` micro-batches; refused when it does not divide."""
    per_step = world * cfg.grad_accum
    if cfg.batch_size % per_step:
        raise SertError(f"train.batch_size {cfg.batch_size} (the effective batch) is not divisible by "
                        f"{world} process(es) x grad_accum {cfg.grad_accum}; choose a multiple of {per_step}")
    return {"effective_batch": cfg.batch_size, "per_device_batch": cfg.batch_size // per_step,
            "grad_accum": cfg.grad_accum, "world_size": world}


def _token_counts(trainer, collator) -> tuple[int, int, int]:
    """(useful, padded, supervised) tokens over all processes: each one collates only its shard."""
    import torch

    counts = torch.tensor([collator.real_tokens, collator.padded_tokens, collator.loss_tokens],
                          dtype=torch.long, device=trainer.args.device)
    if trainer.args.world_size > 1:
        counts = trainer.accelerator.reduce(counts, reduction="sum")
    return tuple(int(c) for c in counts.tolist())


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _versions() -> dict:
    import peft
    import torch
    import transformers

    return {"sert": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "python": sys.version.split()[0]}


def _model_card(info: dict) -> str:
    s = info["settings"]
    m = info["metrics"]
    rows = "\n".join(f"| {k} | {v} |" for k, v in s.items())
    mrows = "\n".join(f"| {k} | {v} |" for k, v in m.items())
    what = {"self": "SERT self-training on the model's own filtered latent reasoning paths (SERT §II-B)",
            "distill": "reasoning distillation on teacher chain-of-thought rationales (SERT §II-C)",
            "finetune": "plain fine-tuning on question -> answer (the Finetune arm of SERT Table II)",
            "joint": "one training on the union of the model's own selected latent paths and teacher rationales "
                     "(SERT's joint optimisation, docs/METHOD.md)"}[info["stage"]]
    return f"""---
base_model: {info['base_model']}
library_name: transformers
tags: [sert, reasoning, {info['stage']}]
---
# {info['name']}

Trained with `sert train --stage {info['stage']}`: {what}.
Self-Enhanced Reasoning Training: Zhang et al., ICASSP 2025 (arXiv 2502.12744).

- Base model: `{info['base_model']}`
- Data: `{info['data']}` ({info['n_examples']} examples)
- Prompt: `Question: {{q}}. Answer:`; the model continues with its reasoning and
  `So the answer is {{a}}.`, then EOS. Decode greedily from that prompt.

## Settings
| setting | value |
|---|---|
{rows}

## Metrics
| metric | value |
|---|---|
{mrows}

Loss curve and token counts: `train_summary.json` next to this directory.
"""


def run_train(model_name: str, data: str | os.PathLike | Sequence[dict], stage: str, cfg: TrainConfig,
              out_dir: str | os.PathLike, resume: bool = False, device: str | None = None,
              dtype: str | None = None, limit: int | None = None) -> Path:
    """Train ``model_name`` on ``data`` for ``stage``; return the final checkpoint directory.

    ``device``: auto | cpu | cuda (pick a GPU with CUDA_VISIBLE_DEVICES). ``dtype``:
    the mixed precision (see :func:`training_precision`; auto = bf16 on a GPU and on a CPU where bf16
    is measured faster, else fp32); weights stay fp32. ``cfg.batch_size`` is the effective
    batch over all processes (:func:`batch_plan`). A finished ``out_dir/final`` makes this a
    no-op; a checkpoint in ``out_dir/checkpoints`` is resumed automatically.
    """
    check(cfg)
    out = Path(out_dir)
    final = out / "final"
    if stage not in STAGES:
        build_pairs(stage, [])  # raises with did-you-mean
    records, source = load_records(stage, data, limit)
    pairs = build_pairs(stage, records)
    _warn_unused_weights(pairs, cfg, source)
    if (final / "config.json").exists():
        _check_fingerprint(out, _fingerprints(model_name, stage, pairs, cfg, out))
        log.info(f"train: {final} exists; skipped (delete it to retrain)")
        return final
    if device not in (None, "auto", "cpu", "cuda"):
        raise SertError(f"--device {device}: training takes auto, cpu or cuda; "
                        "choose GPUs with CUDA_VISIBLE_DEVICES (or accelerate launch / torchrun)")
    prec = training_precision(cfg, device or "auto", dtype)  # one-line refusals before anything is written
    _trainer_accepts(cfg, out, prec, device, batch_plan(cfg, int(os.environ.get("WORLD_SIZE", "1"))))
    check_report_to(cfg.report_to)

    # a failure before any output removes the directory the lock made
    with RunLock(out) if _is_main() else contextlib.nullcontext():
        if (final / "config.json").exists():  # finished by another process meanwhile
            _check_fingerprint(out, _fingerprints(model_name, stage, pairs, cfg, out))
            log.info(f"train: {final} exists; skipped (delete it to retrain)")
            return final
        return _train(model_name, pairs, source, stage, cfg, out, resume, device, dtype, prec)


def _trainer_accepts(cfg: TrainConfig, out: Path, prec: tuple[str, str], device: str | None, plan: dict) -> None:
    """The Trainer's arguments built once before anything is written, so a setting it refuses (beyond
    those the config already checks) is one line, not a traceback after the model has loaded."""
    import torch

    cuda = device != "cpu" and torch.cuda.is_available()
    try:
        _training_args(cfg, out / "checkpoints", plan, prec[0], cuda, 1, "none")
    except (ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SertError(f"train: the Trainer refuses these settings ({first}); see sert train --help") from None


def _check_fingerprint(out: Path, fps: list[str]) -> None:
    """Refuse ``out`` when it holds a model trained with another model/data/settings."""
    cfg_file = out / "train_config.json"
    recorded = read_json(cfg_file) if cfg_file.exists() else {}
    old = recorded.get("fingerprint")
    if old is not None and not _same_training(recorded, fps):
        refuse_other(out, "holds a model trained with a different model/data/settings", {"fingerprint": old},
                     {"fingerprint": fps[0]}, f"use another --out or delete {out}")


def _last_checkpoint(ckpt_dir: Path) -> str | None:
    """The newest complete Trainer checkpoint in ``ckpt_dir``; torn ones are deleted.

    Trainer writes a checkpoint's files in place and ``trainer_state.json`` last, so a
    checkpoint without a readable one was cut short by a kill (resuming it would fail).
    """
    if not ckpt_dir.is_dir():
        return None
    found = sorted(((int(p.name.split("-")[1]), p) for p in ckpt_dir.iterdir()
                    if p.is_dir() and p.name.startswith("checkpoint-") and p.name.split("-")[1].isdigit()),
                   reverse=True)
    for _, p in found:
        try:
            json.loads((p / "trainer_state.json").read_text(encoding="utf-8"))
            return str(p)
        except (OSError, ValueError):
            log.info(f"train: {p} is incomplete (interrupted while saving); removed")
            shutil.rmtree(p, ignore_errors=True)
    return None


def _fit_max_length(model_name: str, max_length: int) -> int:
    """``train.max_length``, or the model's context when that is shorter (positions beyond it do not
    exist: an over-long example would end in an IndexError inside the model), with a warning."""
    from transformers import AutoConfig

    try:
        ctx = context_length(AutoConfig.from_pretrained(resolve_model(model_name)))
    except (OSError, ValueError):
        return max_length  # the model load reports it in one line
    if ctx is not None and max_length > ctx:
        log.warning(f"train.max_length {max_length} exceeds the model's context ({ctx} positions); "
                    f"examples are cut to {ctx} tokens")
        return ctx
    return max_length


def _train(model_name, pairs, source, stage, cfg: TrainConfig, out: Path, resume, device, dtype,
           prec: tuple[str, str]) -> Path:
    """Train and write ``out/final``: the resume point, the data, the student, the Trainer's
    run (arguments, callbacks), then the summary and the final write."""
    final = out / "final"
    fps = _fingerprints(model_name, stage, pairs, cfg, out)
    last = _resume_point(out, fps, resume)
    tok = load_tokenizer(model_name)
    feats, truncated = _features(pairs, tok, cfg, _fit_max_length(model_name, cfg.max_length))
    weights = _weight_summary(feats) if cfg.use_weights else None
    path = resolve_model(model_name)
    lengths = _completion_lengths(feats, path)
    model = _load_student(model_name, path, tok, cfg)
    ensure_dir(out)
    if _is_main():  # written once the model has loaded: a bad --model leaves nothing behind
        atomic_write_json(out / "train_config.json", {
            "model": model_name, "stage": stage, "data": source, "n_examples": len(pairs), "device": device,
            "dtype": dtype, "precision": prec[0], "precision_reason": prec[1], "train": to_dict(cfg),
            "fingerprint": fps[0], "fingerprint_aliases": fps[1:]})
    info = {"stage": stage, "base_model": str(model_name), **lengths}
    trainer, collator, plan = _make_trainer(model, tok, feats, cfg, out, device, prec, info)
    t0 = time.time()
    result = trainer.train(resume_from_checkpoint=last or None)
    wall = time.time() - t0
    useful, padded, supervised = _token_counts(trainer, collator)
    if not trainer.is_world_process_zero():
        return final

    curve, metrics = _loss_metrics(trainer, result, wall, useful, padded)
    metrics.update(steady_rate(trainer.step_clock))
    settings = {"stage": stage, "data": source, "examples": len(feats), "truncated": truncated,
                "precision": prec[0], "precision_reason": prec[1], **plan,
                **{k: v for k, v in to_dict(cfg).items() if k not in ("logging_steps", "save_total_limit")}}
    summary = {
        "stage": stage, "model": model_name, "data": source, "n_examples": len(feats), "n_truncated": truncated,
        "loss_curve": curve, **metrics,
        "tokens": {"useful": useful, "padded": padded, "supervised": supervised,
                   "note": "all processes, counted in this session (after a resume: since the resume)"},
        "resumed_from": last, "device": str(trainer.args.device), "precision": prec[0],
        "precision_reason": prec[1], **plan, "lr_scheduler": cfg.lr_scheduler,
        "warmup_ratio": cfg.warmup_ratio, "max_grad_norm": cfg.max_grad_norm,
        "max_completion_tokens": lengths["max_completion_tokens"],
        "own_max_completion_tokens": lengths["own_max_completion_tokens"],
        "config": to_dict(cfg), "fingerprint": fps[0], "versions": _versions(),
        **({"weights": weights} if weights else {}),
        **({"epoch_snapshots": {e: str(snapshot_dir(out, e)) for e in _snapshot_epochs(cfg)}} if cfg.eval_epochs else {}),
    }
    card = {"name": f"{Path(str(model_name)).name}-sert-{stage}", "base_model": model_name, "stage": stage,
            "data": source, "n_examples": len(feats), "settings": settings, "metrics": metrics}
    _write_final(out, _trained_model(trainer, cfg), tok, card, info, summary)
    steady = (f" ({metrics['useful_tokens_per_s_after_first_step']} after a first step of "
              f"{metrics['first_step_s']}s)" if metrics["useful_tokens_per_s_after_first_step"] else "")
    log.info(f"train: done in {wall:.0f}s, final loss {metrics['final_loss']}, "
             f"{metrics['useful_tokens_per_s']} tokens/s{steady} -> {final}")
    return final


def _completion_lengths(feats: list[dict], path: str) -> dict:
    """The longest completion (supervised tokens) of this training and of the base checkpoint's own
    sert trainings: what evaluation's budget must cover (:data:`TRAINING_INFO`)."""
    own_longest = max(sum(1 for t in f["labels"] if t != -100) for f in feats)
    inherited = longest_training_completion(path)
    return {"max_completion_tokens": max(own_longest, inherited or 0),
            "own_max_completion_tokens": own_longest, "inherited_max_completion_tokens": inherited}


def _make_trainer(model, tok, feats: list[dict], cfg: TrainConfig, out: Path, device, prec: tuple[str, str],
                  info: dict):
    """The Trainer of this run (its arguments, collator, callbacks) on the device and processes it runs
    on; returns it, its collator and the batch plan."""
    import torch

    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        avoid_cudnn_attention("cuda")  # no per-shape attention plans for length-grouped batches
    world = int(os.environ.get("WORLD_SIZE", "1"))
    plan = batch_plan(cfg, world)
    if _is_main():
        log.info(f"train: {prec[0]} ({prec[1]}); batch {plan['effective_batch']} = {world} "
                 f"process(es) x {plan['per_device_batch']} x {cfg.grad_accum} accumulated")
    attention = training_attention(model, cfg.attention, cuda)
    if _is_main():
        log.info(f"train: attention {attention}")
    if cfg.compile:
        if not cuda and prec[0] == "fp32" and _is_main():
            log.warning("train.compile: an fp32 step on a CPU measured 0.92x compiled (docs/performance.md); "
                        "it pays off in bf16")
        compile_decoder(model)
    report_to, report_cbs = _reporting(cfg.report_to, out / "logs")
    args = _training_args(cfg, out / "checkpoints", plan, prec[0], cuda, len(feats), report_to)
    collator = PadCollator(tok.pad_token_id, use_weights=cfg.use_weights,
                           multiple=pad_multiple("cuda" if cuda else "cpu"))
    Trainer, SertTrainer = _trainer_classes()
    cls = SertTrainer if cfg.use_weights or cfg.head_on_labels else Trainer
    snaps = [_epoch_snapshots(out, cfg, tok, info)] if cfg.eval_epochs else []
    trainer = cls(model=model, args=args, data_collator=collator, train_dataset=feats, processing_class=tok,
                  callbacks=[*_callbacks(), clock := step_clock(), *report_cbs, *snaps])
    trainer.head_on_labels = bool(cfg.head_on_labels)
    trainer.step_clock = clock
    _quiet_trainer_logs(trainer)
    return trainer, collator, plan


def compile_decoder(model) -> None:
    """``train.compile``: compile the decoder stack in place (``nn.Module.compile``, dynamic shapes, so
    length-grouped batches of every length share one graph); the LM head and the loss stay eager (the
    head runs on the completion positions only, :func:`_head_on`). In place, so checkpoints keep their
    parameter names. The first step pays the compile (minutes on a CPU, less with inductor's cache warm)."""
    target = model.get_decoder() if hasattr(model, "get_decoder") else model
    target.compile(dynamic=True)
    if _is_main():
        log.info(f"train: torch.compile on {type(target).__name__} (dynamic shapes); the first step compiles")


def step_clock():
    """A Trainer callback that notes the wall time and the tokens seen (the Trainer's non-padding count)
    at the start of training, at the end of this session's first optimizer step and at the last one:
    the steady rate after a compile or a warm-up (:func:`steady_rate`)."""
    from transformers import TrainerCallback

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.start, self.first, self.end = time.time(), None, None

        def on_step_end(self, args, state, control, **kw):
            self.end = (time.time(), state.num_input_tokens_seen, state.global_step)
            self.first = self.first or self.end

    return StepClock()


def steady_rate(clock) -> dict:
    """Seconds of this session's first step and useful tokens/s over the steps after it, from a
    :func:`step_clock` (the same keys always; None where fewer than two steps ran in this session or
    the Trainer counted no tokens)."""
    out = {"first_step_s": None, "steps_after_first": 0, "useful_tokens_per_s_after_first_step": None}
    if getattr(clock, "first", None) is None:
        return out
    (t1, n1, s1), (t2, n2, s2) = clock.first, clock.end
    out.update(first_step_s=round(t1 - clock.start, 1), steps_after_first=s2 - s1)
    if n2 > n1 and t2 > t1:
        out["useful_tokens_per_s_after_first_step"] = round((n2 - n1) / (t2 - t1), 1)
    return out


def training_attention(model, choice: str, cuda: bool) -> str:
    """Set the attention kernel ``model`` trains with (``train.attention``) and return its name. ``auto``:
    eager on a CPU (torch's CPU flash kernel spends ~17% of a bf16 step in its backward at sert's
    100-200-token batches; eager attention's matmuls take a fraction of that), the model's own elsewhere.
    Not saved with the checkpoint: a trained model loads with its default kernel."""
    current = getattr(model.config, "_attn_implementation", None) or "sdpa"
    want = ("eager" if not cuda else current) if choice == "auto" else choice
    if want != current:
        try:
            model.set_attn_implementation(want)
        except (ValueError, AttributeError, ImportError) as e:  # a model without that kernel keeps its own
            log.warning(f"train: attention {want} not available for this model ({str(e).splitlines()[0]}); "
                        f"keeping {current}")
            return current
    return want


def _weight_summary(feats: list[dict]) -> dict:
    """The loss weights as trained (after :func:`normalize_weights`), per data source."""

    return {src: weight_stats([f["weight"] for f in feats if f.get("source") == src])
            for src in sorted({f.get("source", "self") for f in feats})}


def longest_training_completion(model_name: str) -> int | None:
    """The longest completion (student tokens, answer phrase and EOS included) that the checkpoint
    ``model_name`` was ever trained on by sert, its ancestors' included (its :data:`TRAINING_INFO`);
    None if sert did not train it. Evaluation sizes its generation budget from it."""
    p = Path(str(model_name)) / TRAINING_INFO
    if not p.is_file():
        return None
    v = read_json(p).get("max_completion_tokens")
    return int(v) if isinstance(v, int) else None


def snapshot_dir(out: Path, epoch: int) -> Path:
    """Where the model at the end of ``epoch`` is kept (``train.eval_epochs``)."""
    return Path(out) / f"epoch-{int(epoch)}"


def _snapshot_epochs(cfg: TrainConfig) -> list[int]:
    return sorted({int(e) for e in cfg.eval_epochs or () if e < cfg.epochs})


def _epoch_snapshots(out: Path, cfg: TrainConfig, tok, info: dict):
    """A callback that writes ``out/epoch-E`` (weights, tokenizer, sert_training.json) at the end of each
    epoch E of ``cfg.eval_epochs`` before the last: at that step's end, i.e. before the Trainer's own
    checkpoint of the step, so any checkpoint a resume starts from has the snapshots before it. A snapshot
    is written once (temp dir, rename); with the constant schedule it is the model a run of E epochs gives."""
    from transformers import TrainerCallback

    wanted = set(_snapshot_epochs(cfg))

    class EpochSnapshots(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            e = state.epoch
            if e is None or abs(e - round(e)) > 1e-6 or round(e) not in wanted or not _is_main():
                return control
            d = snapshot_dir(out, round(e))
            if (d / "config.json").exists():
                return control
            trained = model.module if hasattr(model, "module") else model
            if cfg.lora:
                import copy
                trained = copy.deepcopy(trained).merge_and_unload()
            _write_snapshot(d, trained, tok, {**info, "epoch": round(e), "global_step": state.global_step})
            log.info(f"train: epoch {round(e)} snapshot -> {d}")
            return control

    return EpochSnapshots()


def _write_snapshot(d: Path, trained, tok, info: dict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=".snap-tmp-", dir=d.parent))
    use_cache = trained.config.use_cache
    try:
        trained.config.use_cache = True  # as the final checkpoint is saved: generation uses its KV cache
        trained.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / TRAINING_INFO, info)
        os.chmod(tmp, 0o755)
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        trained.config.use_cache = use_cache


def _resume_point(out: Path, fps: list[str], resume: bool) -> str | None:
    """The checkpoint to resume from (None: start from the model), after removing what a kill left
    half-written; checkpoints of another model/data/settings are refused."""
    ckpt_dir = out / "checkpoints"
    cfg_file = out / "train_config.json"
    for stale in [*out.glob(".final-tmp-*"), *out.glob(".snap-tmp-*")]:  # a kill while final/ or a snapshot was written
        shutil.rmtree(stale, ignore_errors=True)
    last = _last_checkpoint(ckpt_dir)
    if last:
        recorded = read_json(cfg_file) if cfg_file.exists() else {}
        old = recorded.get("fingerprint")
        if old is not None and not _same_training(recorded, fps):
            refuse_other(ckpt_dir, "holds checkpoints of a different model/data/settings", {"fingerprint": old},
                         {"fingerprint": fps[0]}, f"use another --out or delete {ckpt_dir}")
        log.info(f"train: resuming from {last}")
    elif resume:
        log.info(f"train: --resume given but {ckpt_dir} has no checkpoint; starting from the base model")
    return last


def _features(pairs: list[dict], tok, cfg: TrainConfig, max_length: int) -> tuple[list[dict], int]:
    """The tokenized examples (loss weights rescaled to mean 1 with ``use_weights``) and how many were truncated."""
    feats, truncated = tokenize_pairs(pairs, tok, max_length)
    if truncated:
        log.info(f"train: {truncated} of {len(feats)} examples exceed max_length={max_length} "
                 "tokens and were truncated (start of the prompt first)")
    if all(f["labels"][-1] != tok.eos_token_id for f in feats):  # the end of every target was cut off
        raise SertError(f"train.max_length {max_length}: every one of the {len(feats)} examples is longer and "
                        "loses the end of its target (its answer and EOS), so none would be learned whole; "
                        "raise --max-length (train.max_length)")
    if cfg.use_weights:
        normalize_weights(feats, cfg.self_weight)  # (D) per source, see weighted_loss
    return feats, truncated


def _load_student(model_name: str, path: str, tok, cfg: TrainConfig):
    """The model to train, fp32 master weights, its generation config stopping at the tokenizer's
    EOS too; LoRA adapters on every linear layer with ``cfg.lora``."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError) as e:
        raise SertError(_not_found(model_name, e)) from None
    except Exception as e:  # noqa: BLE001 - a truncated weights file: one line; anything else is raised
        raise unreadable_weights(model_name, e) from None
    model.config.use_cache = False
    gc = model.generation_config
    if gc.pad_token_id is None:
        gc.pad_token_id = tok.pad_token_id
    eos = gc.eos_token_id
    if eos is None or (tok.eos_token_id not in (eos if isinstance(eos, list) else [eos])):
        gc.eos_token_id = tok.eos_token_id if eos is None else sorted({*(eos if isinstance(eos, list) else [eos]),
                                                                        tok.eos_token_id})
    if cfg.lora:
        from peft import LoraConfig, get_peft_model
        model = get_peft_model(model, LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                                                 lora_dropout=cfg.lora_dropout, target_modules="all-linear",
                                                 task_type="CAUSAL_LM"))
    return model


def _training_args(cfg: TrainConfig, ckpt_dir: Path, plan: dict, precision: str, cuda: bool, n_examples: int,
                   report_to):
    """The Trainer's arguments for ``cfg`` (the paper's Adam, batch and epochs; our checkpointing)."""
    from transformers import TrainingArguments

    steps_per_epoch = max(1, math.ceil(n_examples / cfg.batch_size))
    # names that moved between transformers releases (>= 4.57 supported)
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    version_kw = {}
    if "train_sampling_strategy" in known:
        version_kw["train_sampling_strategy"] = "group_by_length" if cfg.group_by_length else "random"
    else:
        version_kw["group_by_length"] = cfg.group_by_length
    if "include_num_input_tokens_seen" in known:  # for step_clock's steady rate
        version_kw["include_num_input_tokens_seen"] = "non_padding"
    if "warmup_ratio" in known:
        version_kw["warmup_ratio"] = cfg.warmup_ratio
    else:
        version_kw["warmup_steps"] = cfg.warmup_ratio  # a float in [0, 1) is a ratio of total steps
    return TrainingArguments(
        **version_kw,
        output_dir=str(ckpt_dir),
        per_device_train_batch_size=plan["per_device_batch"],
        gradient_accumulation_steps=cfg.grad_accum,
        max_grad_norm=cfg.max_grad_norm,
        num_train_epochs=cfg.epochs,
        learning_rate=cfg.learning_rate,
        weight_decay=cfg.weight_decay,  # 0 -> AdamW is Adam, as the paper says
        lr_scheduler_type=cfg.lr_scheduler,
        seed=cfg.seed,
        data_seed=cfg.seed,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not cuda,  # bf16 on a CPU is the Trainer's CPU autocast, which it only enables with use_cpu
        save_strategy="steps",
        save_steps=min(steps_per_epoch, 200),  # at least once per epoch; a kill loses <= 200 steps
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
        logging_first_step=True,
        report_to=report_to,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=cuda,
        ddp_find_unused_parameters=False,  # every trainable weight gets a gradient: no extra graph walk per step
        disable_tqdm=not sys.stderr.isatty(),
    )


def _callbacks() -> list:
    """Our Trainer callbacks: a log at every checkpoint (resumable loss curves) and one line per log."""
    from transformers import TrainerCallback

    class LogAtSave(TrainerCallback):
        """Log (which resets the running loss) at every checkpoint and at the last step: no logged
        window straddles a checkpoint, so a resumed run's loss curve equals an uninterrupted one's."""

        def on_step_end(self, args, state, control, **kw):
            if control.should_save or state.global_step >= state.max_steps:
                control.should_log = True
            return control

    class StepLog(TrainerCallback):
        """One ``[sert] train: step ...`` line per logged window instead of the Trainer's raw dicts."""

        def on_log(self, args, state, control, logs=None, **kw):
            if state.is_world_process_zero and logs and "loss" in logs:
                ep = logs.get("epoch", state.epoch) or 0
                log.info(f"train: step {state.global_step}/{state.max_steps} (epoch {float(ep):.2f}) "
                         f"loss {float(logs['loss']):.4f}, lr {float(logs.get('learning_rate', 0)):.2e}")

    return [LogAtSave(), StepLog()]


def _loss_metrics(trainer, result, wall: float, useful: int, padded: int) -> tuple[list[dict], dict]:
    """The logged loss curve and the run's metrics (final and mean loss, steps, time, throughput)."""
    curve = [{"step": h["step"], "epoch": h.get("epoch"), "loss": h["loss"], "grad_norm": h.get("grad_norm")}
             for h in trainer.state.log_history if "loss" in h]
    # Mean over all steps from the logged windows (each log averages the steps since the last
    # one): unlike result.training_loss, it also covers the steps before a resume.
    prev, total = 0, 0.0
    for c in curve:
        total, prev = total + c["loss"] * (c["step"] - prev), c["step"]
    return curve, {
        "final_loss": round(curve[-1]["loss"], 4) if curve else None,
        "mean_train_loss": round(total / prev, 4) if prev else round(result.training_loss, 4),
        "steps": trainer.state.global_step,
        "train_time_s": round(wall, 1),
        "useful_tokens_per_s": round(useful / wall, 1) if wall > 0 and useful else None,
        "padding_efficiency": round(useful / padded, 3) if padded else None,
    }


def _trained_model(trainer, cfg: TrainConfig):
    """The trained model as it is saved: unwrapped, LoRA merged, its KV cache on again."""
    trained = trainer.accelerator.unwrap_model(trainer.model)
    if cfg.lora:
        trained = trained.merge_and_unload()
    trained.config.use_cache = True
    return trained


def _write_final(out: Path, trained, tok, card: dict, info: dict, summary: dict) -> None:
    """Write ``out/final`` (weights, tokenizer, model card, sert_training.json) into a temp directory,
    then the summary, then rename: ``final/`` exists only complete and marks the run done."""
    tmp = Path(tempfile.mkdtemp(prefix=".final-tmp-", dir=out))
    try:
        trained.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", _model_card(card))
        atomic_write_json(tmp / TRAINING_INFO, info)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a checkpoint is meant to be shared
        # summary first: final/ is what marks the run done, so it must come last
        atomic_write_json(out / "train_summary.json", summary)
        os.replace(tmp, out / "final")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
