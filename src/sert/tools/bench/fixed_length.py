"""Fixed-length generation: EOS masked, so ours and the baseline generate the same number of tokens."""
from __future__ import annotations

import contextlib
from typing import Sequence

from ...errors import SertError


@contextlib.contextmanager
def no_eos(model, ids: Sequence[int]):
    """Set the EOS logits to -inf (a forward hook on the output layer): nothing stops early,
    so ours and the baseline generate exactly ``max_new_tokens`` per row."""
    head = model.get_output_embeddings()
    if head is None:
        raise SertError("the model has no output layer to hook; cannot fix the output length")
    ids = list(ids)

    def hook(_mod, _inp, out):
        out[..., ids] = float("-inf")
        return out

    h = head.register_forward_hook(hook)
    try:
        yield
    finally:
        h.remove()
