"""sert: Self-Enhanced Reasoning Training (Zhang et al., ICASSP 2025, arXiv 2502.12744).

Stages, one module each: :mod:`sert.mine` (latent paths), :mod:`sert.filters`
(quality filters), :mod:`sert.teach` (teacher rationales), :mod:`sert.train`
(self-training / distillation / fine-tuning), :mod:`sert.evaluate`,
:mod:`sert.report`, chained by :mod:`sert.pipeline`. ``import sert`` gives each stage as one typed function
(:mod:`sert.api`: ``sert.mine_paths``, ``sert.filter_paths``, ``sert.teach_rationales``,
``sert.train_model``, ``sert.evaluate_model``, ``sert.write_report``, ``sert.run_experiment``).
"""
from .version import __version__  # noqa: F401

# The Python API (docs/api.md): the stages as typed functions. No torch or transformers at import.
from .api import (EvalConfig, EvalResult, Example, FilterConfig, FilterResult, MineConfig, MineResult,  # noqa: E402
                  ReportResult, RunConfig, RunResult, Task, TeachConfig, TeachResult, TrainConfig, TrainResult,
                  evaluate_model, filter_paths, load_task, mine_paths, read_predictions, run_experiment,
                  teach_rationales, train_model, write_report)
