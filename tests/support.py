"""Test-only glue shared by several test folders (what users may want lives in ``drope_lens.testing``)."""

from __future__ import annotations

import functools

import torch

from drope_lens.testing import hf_nope_reference

EMBEDDED_TEXTS = (
    "Paris is the capital of France. It has many museums and a famous iron tower.",
    "The river flows past the old mill.",
    "def add(a, b):\n    return a + b  # a tiny function with a comment",
)


@functools.lru_cache(maxsize=4)
def embedded_phase_case(model, hf):
    """Shared by the slow phase tests: TL profiles of EMBEDDED_TEXTS (one padded batch) and HF
    references per unpadded text (fp32 eager attentions, hidden states, raw last residual)."""
    from drope_lens.analysis.profile_pass import phase_profile
    from drope_lens.loading import encode

    batch = encode(model.tokenizer, list(EMBEDDED_TEXTS))
    resid = phase_profile(model, batch, batch_size=len(batch))
    final = phase_profile(model, batch, batch_size=len(batch), last_layer="final_norm")
    refs = []
    for i, n in enumerate(batch.lengths.tolist()):
        grabbed = {}

        def grab(module, args, out, grabbed=grabbed):
            grabbed["last"] = out[0] if isinstance(out, tuple) else out

        handle = hf.model.layers[-1].register_forward_hook(grab)
        try:
            with torch.no_grad():
                out = hf(batch.tokens[i : i + 1, :n], output_attentions=True, output_hidden_states=True)
        finally:
            handle.remove()
        hidden = [h[0].double() for h in out.hidden_states]
        refs.append(
            {
                "attentions": [a[0].double() for a in out.attentions],  # [head, q, k] per layer
                "hidden": hidden,  # [0] embeddings, [l+1] after block l, [-1] final norm output
                "last_raw": grabbed["last"].reshape(hidden[-1].shape).double(),
            }
        )
    return batch, resid, final, refs


def hf_nope_twin(hf):
    """Cached HF NoPE reference (identity rotary) of ``hf`` (a deep copy; ``hf`` is untouched)."""
    return _hf_nope_twin(hf)


@functools.lru_cache(maxsize=2)
def _hf_nope_twin(hf):
    import copy

    return hf_nope_reference(copy.deepcopy(hf))
