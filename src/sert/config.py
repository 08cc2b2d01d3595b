"""Every stage's settings, with the paper's values as defaults (cited beside each).

Precedence: dataclass defaults < YAML file < command-line flags. Unknown or
ill-typed keys fail at once, all reported together, with "did you mean".
Each field's help (its metadata, shown by ``sert <command> --help``) says what it
means and where its value comes from: (S) = stated in the SERT paper (Zhang et al.,
ICASSP 2025), with the paper's value; (D) = our decision where the paper is silent
(docs/METHOD.md gives the method and every decision).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .arms import check_arms
from .errors import SertError, did_you_mean
from .io import reads_utf8


def opt(default: Any = dataclasses.MISSING, help: str = "", *, factory=None):
    """A config field whose ``help`` (meaning, then (S) the paper's value or (D) our decision)
    is its documentation and its command-line help."""
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


def field_help(f: dataclasses.Field) -> str:
    """The help text of a config field ('' when it has none)."""
    return f.metadata.get("help", "")


@dataclass
class MineConfig:
    """Stage 1: latent-path mining (SERT §II-A)."""
    split: str = opt("train", "task split to mine; (D) the train split only")
    limit: int | None = opt(None, "questions to mine, none = the whole split; (D)")
    mode: str = opt("sert", "sert (branch + sample) or cot-decoding (branch + greedy, Wang & Zhou 2024); "
                            "(S) paper: sert")
    top_k_branches: int = opt(5, "first tokens to branch on; (S) paper: 5")
    samples_per_branch: int = opt(5, "samples per branch, 25 paths per question with 5 branches; (S) paper: 5")
    top_k: int = opt(10, "top-k of the sampler; (S) paper: 10")
    top_p: float = opt(0.95, "top-p of the sampler; (S) paper: 0.95")
    temperature: float = opt(1.0, "sampling temperature; (D) paper silent: plain sampling, 1.0")
    max_new_tokens: int = opt(128, "tokens per path at most; (D) paper silent: 128")
    skip_eos_branch: bool = opt(False, "branch on the top-k first tokens other than EOS (an EOS branch is an "
                                       "empty path, dropped by the filters' eos_branch rule); (D) off = paper")
    batch_questions: int | str = opt("auto", "questions decoded together (x25 rows); (D) auto: 8 on a CPU "
                                             "(measured best there), on a GPU as many as half its free memory holds")
    seed: int = opt(0, "sampling seed (each question's draws come from (seed, question id)); (D)")
    prompt: str = opt("zero-shot", "zero-shot (the paper's mining prompt 'Question: {q} Answer:') or train (the "
                                   "trained arms' prompt 'Question: {q}. Answer:', for mining with a checkpoint sert "
                                   "trained: a self-improvement arm's mine_from); (S) paper: zero-shot")

    def validate(self) -> list[str]:
        e = []
        if self.prompt not in ("zero-shot", "train"):
            e.append(f"mine.prompt: expected zero-shot or train, got {self.prompt!r}")
        if self.mode not in ("sert", "cot-decoding"):
            e.append(f"mine.mode: expected 'sert' or 'cot-decoding', got {self.mode!r}")
        if self.batch_questions != "auto" and not isinstance(self.batch_questions, int):
            e.append(f"mine.batch_questions: expected a positive integer or auto, got {self.batch_questions!r}")
        for k in ("top_k_branches", "samples_per_branch", "top_k", "max_new_tokens", "batch_questions"):
            if isinstance(getattr(self, k), int) and getattr(self, k) < 1:
                e.append(f"mine.{k}: expected a positive integer, got {getattr(self, k)}")
        if not 0 < self.top_p <= 1:
            e.append(f"mine.top_p: expected 0 < top_p <= 1, got {self.top_p}")
        if self.temperature <= 0:
            e.append(f"mine.temperature: expected > 0, got {self.temperature}")
        if self.limit is not None and self.limit < 1:
            e.append(f"mine.limit: expected a positive integer, got {self.limit}")
        if self.split not in ("train", "test"):
            e.append(f"mine.split: expected train or test, got {self.split!r}")
        return e


@dataclass
class FilterConfig:
    """Stage 1b: quality filters, applied in the paper's order (SERT §II-A)."""
    patterns: list[str] = opt(help="pattern rules: prompt_imitation, direct_answer, option_listing; "
                                   "(S) paper: a pattern filter; (D) its three named rules",
                              factory=lambda: ["prompt_imitation", "direct_answer", "option_listing"])
    min_tokens: int = opt(25, "drop paths shorter than this many tokens; (S) paper: 25")
    max_rep2: float = opt(0.20, "drop paths whose bigram repetition rep-2 exceeds this; (S) paper: 0.20")
    min_ppl: float = opt(5.0, "drop paths whose perplexity (under the sampling model, (D)) is below this; "
                              "(S) paper: 5")
    select: str = opt("auto", "the path kept per question: rep2 (lowest rep-2), confidence (highest CoT-decoding "
                              "confidence), ppl (lowest perplexity, (D)); auto = rep2, or confidence in "
                              "cot-decoding mode; (S) paper: lowest rep-2")
    answer_consistency: bool = opt(False, "drop paths whose stated answer contradicts the gold one (STaR-style); "
                                          "(D) off = paper")
    answer_consistency_strict: bool = opt(False, "with answer_consistency: also drop paths that state no answer, "
                                                 "keeping only those that reach the gold answer (STaR's rule); (D)")
    confidence_weight: str | None = opt(None, "none, ppl or delta: a per-example loss weight for training (1/PPL or "
                                              "the CoT-decoding confidence delta, mean 1 over the selection); (D) "
                                              "the shipped confidence-weighted arms use delta: on the committed "
                                              "mines it separates gold-stating paths no worse than 1/PPL "
                                              "(docs/METHOD.md)")
    drop_unfinished: bool = opt(False, "drop paths that ran to the mining cap (mine.max_new_tokens) without ending "
                                       "(cut mid-sentence before the gold answer is appended); (D) off = paper: on "
                                       "the committed mines they state the gold answer as often as finished paths")
    ppl_branch_token: bool = opt(True, "the branch token's log-prob counts in a path's perplexity (the path's text "
                                       "starts with it); false = the perplexity of the sampled continuation only; "
                                       "(D) true = the paper's 'PPL of the path'")
    direct_answer_min_words: int = opt(5, "pattern direct_answer: fewer reasoning words than this = no "
                                          "reasoning; (D)")
    option_listing_min: int = opt(3, "pattern option_listing: this many option markers/items = a listing; (D)")

    def validate(self) -> list[str]:
        e = []
        known = ("prompt_imitation", "direct_answer", "option_listing")
        for p in self.patterns:
            if p not in known:
                e.append(f"filter.patterns: unknown rule {p!r}" + did_you_mean(p, known))
        if self.select not in ("auto", "rep2", "confidence", "ppl"):
            e.append(f"filter.select: expected auto, rep2, confidence or ppl, got {self.select!r}")
        if self.min_tokens < 0:
            e.append(f"filter.min_tokens: expected >= 0, got {self.min_tokens}")
        if not 0 <= self.max_rep2 <= 1:
            e.append(f"filter.max_rep2: expected a rate in [0, 1], got {self.max_rep2}")
        if self.min_ppl < 1:
            e.append(f"filter.min_ppl: expected >= 1 (perplexity is never below 1), got {self.min_ppl}")
        for k in ("direct_answer_min_words", "option_listing_min"):
            if getattr(self, k) < 1:
                e.append(f"filter.{k}: expected a positive integer, got {getattr(self, k)}")
        if self.confidence_weight not in (None, "ppl", "delta"):
            e.append(f"filter.confidence_weight: expected null, 'ppl' or 'delta', got {self.confidence_weight!r}")
        return e


@dataclass
class TrainConfig:
    """Stages 2-3 and the Finetune arm (SERT §II-B/C, §III)."""
    batch_size: int = opt(8, "effective (global) batch per optimizer step; (S) paper: 8; (D) per process: "
                             "batch_size / (processes x grad_accum), which must divide")
    learning_rate: float = opt(3e-4, "Adam learning rate; (S) paper: 3e-4")
    epochs: float = opt(20, "training epochs; (S) paper: 20")
    grad_accum: int = opt(1, "micro-batches accumulated per optimizer step (within batch_size); (D)")
    lr_scheduler: str = opt("constant", "learning-rate schedule; (D) paper silent: constant Adam as in "
                                        "Fine-tune-CoT")
    warmup_ratio: float = opt(0.0, "share of the steps spent warming up; (D) paper silent: none")
    max_grad_norm: float = opt(1.0, "gradient-norm clipping, 0 = none; (D) paper silent: the Trainer's default")
    weight_decay: float = opt(0.0, "weight decay; (S) paper: plain Adam, 0")
    max_length: int = opt(512, "tokens per example (prompt + target) at most; (D)")
    seed: int = opt(42, "training seed; (D)")
    seeds: list[int] | None = opt(None, "repeat every training arm once per seed (none = [seed]); the first seed's "
                                        "arms keep the plain names; (D) the paper reports one run")
    seed_arms: list[str] | None = opt(None, "the arms trained and evaluated again for every seed after the first "
                                            "(none = all of them); an arm's starting arm is trained with it; (D)")
    bf16: str = opt("auto", "true | false | auto (= the --dtype auto choice); an explicit --dtype wins; (D)")
    lora: bool = opt(False, "train LoRA adapters through peft instead of all weights; (D) paper: full fine-tuning")
    lora_r: int = opt(16, "LoRA rank; (D)")
    lora_alpha: int = opt(32, "LoRA alpha; (D)")
    lora_dropout: float = opt(0.05, "LoRA dropout; (D)")
    use_weights: bool = opt(False, "per-example loss weights from the filter stage (filter.confidence_weight); "
                                   "an arm whose own selection sets confidence_weight uses them anyway; (D)")
    self_weight: float = opt(1.0, "lambda: the weight of the self-training examples beside the teacher's rationales "
                                  "in a joint (or with_teacher) training; no effect on one source; (D) the method "
                                  "summary's joint optimisation, 1 = the union as it is")
    eval_epochs: list[int] | None = opt(None, "learning curve: keep each trained arm's checkpoint at the end of "
                                              "these epochs and evaluate it like an arm (ARM@E); the last epoch is "
                                              "the arm itself; (D)")
    curve_arms: list[str] | None = opt(None, "the arms that get the eval_epochs points (none = every evaluated "
                                             "trained arm); (D)")
    group_by_length: bool = opt(True, "batch examples of similar length (less padding; same examples, same "
                                      "epochs); (D)")
    head_on_labels: bool = opt(True, "the LM head and the loss run on the completion positions only (the prompt "
                                      "positions' logits are never computed): the same loss, ~1.3x faster on a "
                                      "CPU; false = the model's own forward on every position; (D) speed")
    attention: str = opt("auto", "attention kernel while training: auto (eager on a CPU, where the sdpa flash kernel's "
                                 "backward is slower at these lengths: ~1.2x per step; the model's own on a GPU) | "
                                 "sdpa | eager; evaluation always uses the model's own; (D) speed")
    compile: bool = opt(False, "torch.compile the decoder in place (dynamic shapes) before training: 1.13-1.22x "
                               "per bf16 step after a one-off compile of 267-294 s (cold inductor cache; 2-core "
                               "Zen 4): pays off past ~850 steps (CommonsenseQA RD at 20 epochs: 1960), a loss on "
                               "short runs; for bf16 (on a CPU an fp32 step measured 0.92x: slower); (D) speed")
    save_total_limit: int = opt(1, "checkpoints kept while training; (D)")
    logging_steps: int = opt(10, "optimizer steps between loss log lines; (D)")
    report_to: str = opt("none", "Trainer loggers: none | tensorboard | wandb, mlflow, ... (comma-separated); "
                                 "TensorBoard writes to OUT/logs; (D)")

    def validate(self) -> list[str]:
        e = []
        for k in ("batch_size", "grad_accum", "max_length"):
            if getattr(self, k) < 1:
                e.append(f"train.{k}: expected a positive integer, got {getattr(self, k)}")
        if self.epochs <= 0:
            e.append(f"train.epochs: expected > 0, got {self.epochs}")
        if self.learning_rate <= 0:
            e.append(f"train.learning_rate: expected > 0, got {self.learning_rate}")
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            e.append(f"train.seeds: expected a non-empty list of distinct integers, got {self.seeds}")
        if self.attention not in ("auto", "sdpa", "eager"):
            e.append(f"train.attention: expected auto, sdpa or eager, got {self.attention!r}")
        if str(self.bf16).lower() not in ("auto", "true", "false"):
            e.append(f"train.bf16: expected auto, true or false, got {self.bf16!r}")
        if self.max_grad_norm < 0:
            e.append(f"train.max_grad_norm: expected >= 0 (0 = no clipping), got {self.max_grad_norm}")
        if not 0 <= self.warmup_ratio < 1:
            e.append(f"train.warmup_ratio: expected 0 <= warmup_ratio < 1, got {self.warmup_ratio}")
        if self.grad_accum >= 1 and self.batch_size % self.grad_accum:
            e.append(f"train.batch_size: the effective batch {self.batch_size} is not a multiple of "
                     f"train.grad_accum {self.grad_accum}")
        if not self.self_weight > 0:
            e.append(f"train.self_weight: expected > 0, got {self.self_weight}")
        bad = [x for x in self.eval_epochs or () if x < 1]
        if bad:
            e.append(f"train.eval_epochs: expected positive epoch numbers, got {bad[0]}")
        late = [x for x in self.eval_epochs or () if x > self.epochs]
        if late:
            e.append(f"train.eval_epochs: epoch {late[0]} is after the last one (train.epochs {self.epochs:g})")
        e += _train_extra_errors(self)
        return e


    def seed_list(self) -> list[int]:
        """The training seeds, first one first: ``seeds`` or ``[seed]``."""
        return list(self.seeds) if self.seeds else [self.seed]


@dataclass
class TeachConfig:
    """Stage 3 data: teacher rationales (SERT §II-C; Fine-tune-CoT teacher)."""
    teacher: str = opt("auto", "auto (the task's shipped rationales), a shipped teacher's name, or openai:MODEL; "
                               "(S) paper: text-davinci-002 Zero-shot-CoT (PaLM-540B for CSQA, shipped)")
    keep_correct_only: bool = opt(True, "keep only rationales whose answer is correct; (D) Fine-tune-CoT's default")
    base_url: str | None = opt(None, "OpenAI-compatible endpoint for --teacher openai:MODEL; (D)")
    concurrency: int = opt(8, "teacher requests in flight; (D)")
    max_retries: int = opt(6, "retries of a failed teacher request; (D)")
    timeout: float = opt(60.0, "seconds per teacher request; (D)")
    temperature: float = opt(0.0, "teacher sampling temperature; (S) Fine-tune-CoT teacher: greedy, 0")
    max_tokens: int = opt(128, "teacher reasoning tokens at most; (S) Fine-tune-CoT teacher: 128")
    limit: int | None = opt(None, "questions to teach, none = the whole split; (D)")

    def validate(self) -> list[str]:
        e = []
        for k in ("concurrency", "max_tokens"):
            if getattr(self, k) < 1:
                e.append(f"teach.{k}: expected a positive integer, got {getattr(self, k)}")
        if self.max_retries < 0:
            e.append(f"teach.max_retries: expected >= 0, got {self.max_retries}")
        if self.timeout <= 0:
            e.append(f"teach.timeout: expected > 0 seconds, got {self.timeout}")
        if self.temperature < 0:
            e.append(f"teach.temperature: expected >= 0, got {self.temperature}")
        if self.limit is not None and self.limit < 1:
            e.append(f"teach.limit: expected a positive integer, got {self.limit}")
        return e


@dataclass
class EvalConfig:
    """Evaluation (SERT §III): greedy decoding, answer after 'So the answer is'."""
    split: str = opt("test", "task split to evaluate on; (S) paper: test")
    limit: int | None = opt(None, "questions to evaluate, none = the whole split; (D)")
    batch_size: int = opt(128, "prompts decoded together (longest first; the unit a resumed evaluation decodes "
                               "again); (D) 128: with the rows decoder a larger batch costs little once its "
                               "outputs end, and each step serves more rows (was 32)")
    decoder: str = opt("rows", "rows (greedy decoding that drops each output from its batch once it ends; the "
                               "same tokens as generate in fp32) or generate (transformers' model.generate, "
                               "every batch runs to its longest output); (D) rows: once most outputs have ended a "
                               "step costs a small batch's")
    draft_tokens: int = opt(8, "rows decoder: once at most 8 rows of a batch are left, each step also checks up to "
                               "this many tokens guessed from the output's own text (prompt lookup: a looping "
                               "output guesses its loop) in the same forward; greedy keeps the same tokens; "
                               "0 = off; (D) 8")
    max_new_tokens: int | None = opt(None, "generation budget; auto (none): budget_factor x the longest completion "
                                           "the checkpoint was trained on + budget_margin (default_budget for an "
                                           "untrained model), so a trained arm is never cut short; a number below "
                                           "that longest warns; (D) paper silent")
    budget_factor: float = opt(2.0, "auto budget: times the longest training completion (the demo's SERT+RD "
                                    "answered at up to 353 tokens after 149-token targets); (D)")
    budget_margin: int = opt(64, "auto budget: tokens on top of budget_factor x the longest training "
                                 "completion; (D)")
    default_budget: int = opt(256, "auto budget of a model sert did not train (covers every shipped config); (D)")
    n_bootstrap: int = opt(1000, "bootstrap resamples of the accuracy's 95% CI; (D)")
    seed: int = opt(0, "bootstrap seed; (D)")
    judge: str | None = opt(None, "openai:MODEL for the paper's 0-10 LLM judge score, optional; "
                                  "(S) paper: an LLM judge")
    judge_base_url: str | None = opt(None, "OpenAI-compatible endpoint of the judge; (D)")

    def validate(self) -> list[str]:
        e = []
        for k in ("batch_size", "max_new_tokens", "default_budget"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                e.append(f"eval.{k}: expected a positive integer, got {getattr(self, k)}")
        if self.budget_margin < 0:
            e.append(f"eval.budget_margin: expected >= 0, got {self.budget_margin}")
        if self.budget_factor < 1:
            e.append(f"eval.budget_factor: expected >= 1 (the budget must cover the longest completion), "
                     f"got {self.budget_factor}")
        if self.limit is not None and self.limit < 1:
            e.append(f"eval.limit: expected a positive integer, got {self.limit}")
        if self.split not in ("train", "test"):
            e.append(f"eval.split: expected train or test, got {self.split!r}")
        if self.draft_tokens < 0:
            e.append(f"eval.draft_tokens: expected an integer >= 0 (0 = off), got {self.draft_tokens}")
        if self.decoder not in ("rows", "generate"):
            e.append(f"eval.decoder: expected rows or generate, got {self.decoder!r}")
        if self.judge is not None and not (self.judge.startswith("openai:") and self.judge[7:].strip()):
            e.append(f"eval.judge: expected openai:MODEL (any OpenAI-compatible endpoint), got {self.judge!r}")
        if self.n_bootstrap < MIN_BOOTSTRAP:
            e.append(f"eval.n_bootstrap: expected at least {MIN_BOOTSTRAP} resamples (fewer give a 95% CI without "
                     f"tails, or none), got {self.n_bootstrap}")
        return e


@dataclass
class JudgeConfig:
    """The paper's Fig. 4 (SERT §III): an LLM judge scores the paths each filter set keeps
    (``sert judge RUN``; an optional stage of ``sert run`` after filtering)."""
    enabled: bool = opt(False, "judge the filter sets during sert run; (D) off: it needs a judge endpoint")
    model: str | None = opt(None, "openai:MODEL, any OpenAI-compatible endpoint; "
                                  "(S) paper: Llama-3-8B-Instruct")
    base_url: str | None = opt(None, "a local OpenAI-compatible server (vLLM, transformers serve); (D)")
    sample: int = opt(50, "paths judged per filter set; (D) the paper does not say")
    seed: int = opt(0, "seed of the sample; (D)")

    def validate(self) -> list[str]:
        e = []
        if self.sample < 1:
            e.append(f"judge.sample: expected a positive integer, got {self.sample}")
        if self.model is not None and not (self.model.startswith("openai:") and self.model[7:].strip()):
            e.append(f"judge.model: expected openai:MODEL (any OpenAI-compatible endpoint), got {self.model!r}")
        if self.enabled and self.model is None:
            e.append("judge.enabled: needs judge.model (openai:MODEL)")
        return e


@dataclass
class ArmConfig:
    """An arm beyond the paper's five, declared in the config (see sert/arms.py for the table)."""
    name: str = opt("", "the arm's name (its directories: train/NAME, eval/NAME)")
    label: str | None = opt(None, "its name in the report (default: the name)")
    kind: str = opt("self", "finetune | self | distill | joint (one training on a selection and the teacher's "
                            "rationales together, from init; the method summary's joint optimisation, (D))")
    init: str = opt("base", "base, or the arm (same seed) whose checkpoint it starts from")
    data: list[str] | str = opt("selection", "task | teach | filter (the run's selection) | selection (its own); "
                                             "joint: [selection, teach] or [filter, teach]")
    filter: dict | None = opt(None, "data selection: the FilterConfig keys that differ from the run's filter")
    baseline: list[str] | str | None = opt(None, "the arm (or arms) it is compared with question by question in "
                                                 "the report")
    mine_from: str | None = opt(None, "a self-improvement arm (STaR / ReST style, beyond the paper): mine with this "
                                      "trained arm's checkpoint (same seed, its training prompt), keep this arm's own "
                                      "selection, continue training that checkpoint (init must name it); (D)")
    with_teacher: bool = opt(False, "kind self: add the teacher's rationales to the training mix; (D)")
    rounds: int = opt(1, "with mine_from: mine -> filter -> train rounds, each from the previous round's "
                         "checkpoint; (D)")


@dataclass
class RunConfig:
    """A whole experiment: the four arms of SERT Table II for one task and one student."""
    task: str = opt("strategyqa", "task name or data file; (S) paper: StrategyQA and CommonsenseQA")
    model: str = opt("smollm2-135m", "the student: HF id, local path or smollm2-135m (embedded); "
                                     "(S) paper: GPT-2 small/medium/large")
    out: str = opt("runs/experiment", "run directory")
    arms: list[str] = opt(help="arms to run, in sert/arms.py's table; (S) paper: Table II's arms",
                          factory=lambda: ["base", "finetune", "rd", "sert", "sert_rd"])
    arm_specs: list[ArmConfig] = opt(help="arms beyond the paper's (sert/arms.py); (D)", factory=list)
    device: str = opt("auto", "auto | cpu | cuda | cuda:N")
    dtype: str = opt("auto", "auto | float32 | bfloat16 | float16")
    train_limit: int | None = opt(None, "train questions for finetune/rd, none = the whole split; (D)")
    mine: MineConfig = opt(help="stage 1 settings", factory=MineConfig)
    filter: FilterConfig = opt(help="stage 1b settings", factory=FilterConfig)
    train: TrainConfig = opt(help="training settings", factory=TrainConfig)
    teach: TeachConfig = opt(help="teacher settings", factory=TeachConfig)
    eval: EvalConfig = opt(help="evaluation settings", factory=EvalConfig)
    judge: JudgeConfig = opt(help="judge settings", factory=JudgeConfig)

    def validate(self) -> list[str]:
        e = check_arms(self.arms, self.arm_specs)
        if not self.arms:
            e.append("arms: expected at least one arm (e.g. [base, finetune, rd, sert, sert_rd]), got []")
        dup = sorted({a for a in self.arms if self.arms.count(a) > 1})
        if dup:
            e.append(f"arms: {', '.join(map(str, dup))} listed more than once")
        for a in self.arm_specs:
            if a.filter is not None:
                errs: list[str] = []
                sub = _from_dict(FilterConfig, {**dataclasses.asdict(self.filter), **a.filter}, errs,
                                 prefix=f"arm_specs[{a.name}].filter.")
                e += errs or [f"arm_specs[{a.name}].{m}" for m in config_errors(sub)]
        if self.train.seed_arms is not None:
            bad = [a for a in self.train.seed_arms if a not in self.arms or a == "base"]
            if bad:
                e.append(f"train.seed_arms: {', '.join(map(str, bad))} not among the trained arms of this run "
                         f"(arms: {', '.join(a for a in self.arms if a != 'base')})")
        e += placement_errors(self.device, self.dtype)
        if self.train_limit is not None and self.train_limit < 1:
            e.append(f"train_limit: expected a positive integer, got {self.train_limit}")
        for sub in (self.mine, self.filter, self.train, self.teach, self.eval, self.judge):
            e += sub.validate()
        if self.train.curve_arms is not None:
            bad = [a for a in self.train.curve_arms if a not in self.arms or a == "base"]
            if bad:
                e.append(f"train.curve_arms: {', '.join(map(str, bad))} not among the trained arms of this run")
        if self.train.eval_epochs and not float(self.train.epochs).is_integer():
            e.append(f"train.eval_epochs: needs whole train.epochs, got {self.train.epochs}")
        if self.filter.confidence_weight and not self.train.use_weights:
            e.append(f"filter.confidence_weight {self.filter.confidence_weight!r} has no effect unless "
                     "train.use_weights is true; set train.use_weights: true or drop filter.confidence_weight")
        return e


# ------------------------------------------------------------------ checks beyond each class's validate()
# Learning-rate schedules the Trainer runs without an evaluation loop or scheduler arguments (its others,
# reduce_lr_on_plateau, greedy, cosine_with_min_lr, warmup_stable_decay, ..., fail once training starts).
SCHEDULES = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial", "constant_with_warmup",
             "inverse_sqrt")
MIN_BOOTSTRAP = 10  # (D) fewer resamples give a percentile 95% CI without tails (0 or 1: no width at all)
SEED_MAX = 2**32 - 1  # numpy's and the Trainer's seeds are 32-bit, non-negative
INT_MAX = 2**63 - 1   # torch's integers are 64-bit


DEVICE_RE = r"auto|cpu|cuda(:\d+)?|mps|xpu(:\d+)?"  # what --device / RunConfig.device take
DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16", "fp32", "bf16", "fp16")


def placement_errors(device: Any, dtype: Any, prefix: str = "") -> list[str]:
    """``device`` and ``dtype`` settings that name no device or dtype (checked before a model loads)."""
    import re

    e = []
    if not re.fullmatch(DEVICE_RE, str(device)):
        e.append(f"{prefix}device: expected auto, cpu, cuda or cuda:N, got {device!r}")
    if str(dtype) not in DTYPE_NAMES:
        e.append(f"{prefix}dtype: expected auto, float32, bfloat16 or float16, got {dtype!r}")
    return e


def _train_extra_errors(t: "TrainConfig") -> list[str]:
    """What the Trainer, torch or peft would refuse only once training starts (or would accept and
    train on nothing), refused with the config: schedule, logging, checkpoints, optimizer, LoRA, length."""
    e = []
    if t.lr_scheduler not in SCHEDULES:
        e.append(f"train.lr_scheduler: expected one of {', '.join(SCHEDULES)}, got {t.lr_scheduler!r}"
                 + did_you_mean(str(t.lr_scheduler), SCHEDULES))
    for k in ("logging_steps", "save_total_limit", "lora_r", "lora_alpha"):
        if getattr(t, k) < 1:
            e.append(f"train.{k}: expected a positive integer, got {getattr(t, k)}")
    if t.weight_decay < 0:
        e.append(f"train.weight_decay: expected >= 0, got {t.weight_decay}")
    if not 0 <= t.lora_dropout < 1:
        e.append(f"train.lora_dropout: expected 0 <= lora_dropout < 1, got {t.lora_dropout}")
    if 1 <= t.max_length < 2:
        e.append(f"train.max_length: expected at least 2 (a token is learned from the one before it), "
                 f"got {t.max_length}")
    return e


def field_errors(cfg, prefix: str | None = None) -> list[str]:
    """The checks every config field gets from its type, whatever its class's ``validate()`` says
    (so fields added later get them too): a float is finite (NaN and inf pass every comparison a
    ``validate()`` makes), an integer fits 64 bits, a ``seed``/``seeds`` value is in 0..2**32-1, a
    ``*base_url`` is an http(s) URL; nested configs and lists of them alike. ``prefix``: before each
    key (default: the config's section name)."""
    if prefix is None:
        prefix = {hint: f"{name}." for name, hint in typing.get_type_hints(RunConfig).items()
                  if dataclasses.is_dataclass(hint)}.get(type(cfg), "")
    e: list[str] = []
    for f in fields(cfg):
        e += _value_errors(getattr(cfg, f.name), f"{prefix}{f.name}", f.name)
    return e


def _value_errors(v: Any, where: str, name: str) -> list[str]:
    import math
    import re

    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return field_errors(v, f"{where}.")
    if isinstance(v, list):
        return [m for i, x in enumerate(v) for m in _value_errors(x, f"{where}[{i}]", name)]
    if isinstance(v, bool):
        return []
    if isinstance(v, float) and not math.isfinite(v):
        return [f"{where}: expected a finite number, got {v}"]
    if isinstance(v, str) and name.endswith("base_url") and not re.fullmatch(r"https?://\S+", v):
        return [f"{where}: expected an http:// or https:// URL, got {v!r}"]
    if isinstance(v, int):
        if name in ("seed", "seeds") and not 0 <= v <= SEED_MAX:
            return [f"{where}: expected a seed in 0..{SEED_MAX}, got {v}"]
        if abs(v) > INT_MAX:
            return [f"{where}: expected an integer of at most {INT_MAX}, got {v}"]
    return []


def config_errors(cfg) -> list[str]:
    """Every problem of ``cfg``: :func:`field_errors`, then its ``validate()``'s messages about the other
    keys (a key :func:`field_errors` already names is not named twice: ``nan`` is not also out of range)."""
    generic = field_errors(cfg)
    named = {m.split(":", 1)[0] for m in generic}
    try:
        own = cfg.validate() if hasattr(cfg, "validate") else []
    except (TypeError, OverflowError, ValueError) as exc:  # a comparison the bad value broke
        own = [] if generic else [f"{type(cfg).__name__}: {exc}"]
    return generic + [m for m in own if m.split(":", 1)[0] not in named]


# ------------------------------------------------------------------ loading
def _coerce(value: Any, tp: Any, where: str, errors: list[str]) -> Any:
    """Check/convert ``value`` to the annotated type ``tp``; record an error if it does not fit."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner_str = str in args
        if type(None) in args and not inner_str and isinstance(value, str) and value.strip().lower() == "auto":
            return None  # "auto" names the None of an optional number (e.g. eval.max_new_tokens)
        inner = [a for a in args if a is not type(None)]
        for a in inner[:-1]:  # the first member type the value fits (int | str: "8" -> 8, "auto" stays)
            trial: list[str] = []
            v = _coerce(value, a, where, trial)
            if not trial:
                return v
        return _coerce(value, inner[-1], where, errors)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            errors.append(f"{where}: expected a mapping of its keys, got {_yaml_kind(value)}")
            return tp()
        return _from_dict(tp, value, errors, prefix=f"{where}.")
    if origin is list:
        if not isinstance(value, list):
            errors.append(f"{where}: expected a list, got {_yaml_kind(value)}")
            return value
        return [_coerce(v, args[0], f"{where}[{i}]", errors) for i, v in enumerate(value)] if args else value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        errors.append(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            errors.append(f"{where}: expected an integer, got {value!r}")
            return value
        try:
            return int(value)
        except ValueError:
            errors.append(f"{where}: expected an integer, got {value!r}")
            return value
    if tp is float:
        if isinstance(value, bool):
            errors.append(f"{where}: expected a number, got {value!r}")
            return value
        try:
            return float(value)
        except (TypeError, ValueError):
            errors.append(f"{where}: expected a number, got {value!r}")
            return value
    if tp is str:
        if isinstance(value, bool):  # YAML true/false in a string field (e.g. train.bf16)
            return "true" if value else "false"
        if isinstance(value, (dict, list)):
            errors.append(f"{where}: expected a string, got {_yaml_kind(value)}")
            return value
        return str(value)
    return value


def _yaml_kind(value: Any) -> str:
    """What a YAML value is, in the file's terms (an empty ``train:`` section is null)."""
    if value is None:
        return "nothing (null: an empty section?)"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping"}.get(type(value), type(value).__name__) + f" ({value!r})"[:60]


def _from_dict(cls, data: dict, errors: list[str], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for k, v in data.items():
        if k not in names:
            errors.append(f"unknown config key '{prefix}{k}'" + did_you_mean(k, names))
            continue
        kwargs[k] = _coerce(v, hints[k], f"{prefix}{k}", errors)
    try:
        return cls(**kwargs)
    except TypeError as e:  # pragma: no cover - defensive
        errors.append(f"{prefix.rstrip('.') or cls.__name__}: {e}")
        return cls()


def from_dict(cls, data: dict, *, source: str = "config"):
    """Build and validate a config dataclass from a plain dict; all problems in one error."""
    errors: list[str] = []
    cfg = _from_dict(cls, data or {}, errors)
    if not errors:
        errors += config_errors(cfg)
    if errors:
        raise SertError(f"{source}: " + "; ".join(errors))
    return cfg


@reads_utf8("path")
def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.exists():
        raise SertError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark else ""
        raise SertError(f"{p}{line}: invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SertError(f"{p}: expected a mapping of config keys at the top level")
    return data


def load_run_config(path: str | Path, overrides: dict | None = None) -> RunConfig:
    data = load_yaml(path)
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    return from_dict(RunConfig, data, source=str(path))


def _set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
    d[parts[-1]] = value


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def check(cfg, prefix: str = "") -> None:
    """Raise one error naming every problem of ``cfg`` (``prefix`` before them). :func:`from_dict`
    checks what it builds; the library entry points call this once for a config built in code."""
    errors = config_errors(cfg)
    if errors:
        raise SertError(prefix + "; ".join(errors))
