"""sert: Self-Enhanced Reasoning Training (Zhang et al., ICASSP 2025, arXiv 2502.12744).

Stages, one module each: :mod:`sert.mine` (latent paths), :mod:`sert.filters`
(quality filters), :mod:`sert.teach` (teacher rationales), :mod:`sert.train`
(self-training / distillation / fine-tuning), :mod:`sert.evaluate`,
:mod:`sert.report`, chained by :mod:`sert.pipeline`.
"""
__version__ = "0.1.0"
