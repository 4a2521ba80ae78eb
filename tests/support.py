"""Test-only glue shared by several test folders (what users may want lives in ``drope_lens.testing``)."""

from __future__ import annotations

import functools
from typing import Any, Callable

import pytest
import torch

from drope_lens.errors import NonFiniteError
from drope_lens.loading import hooked_from_hf
from drope_lens.loading.hooked import fast_attention as fa
from drope_lens.testing import hf_nope_reference, qk_norm_drope_model, tiny_llama

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


# ------------------------------------------------------------------------------------ hooks and paths
def hooks_left(model) -> list[str]:
    """Names of ``model``'s hook points still holding a forward hook (TransformerLens's handles or torch's)."""
    return [name for name, hp in model.hook_dict.items() if hp.fwd_hooks or hp._forward_hooks]


def legacy_names(cache) -> list[str]:
    """The HookedTransformer hook names of a cache (a bridge's also holds TransformerLens's aliases:
    ``attn.q.hook_out`` for ``attn.hook_q``, ``blocks.L.hook_out`` for ``hook_resid_post`` …)."""
    return [n for n in cache.keys() if not n.endswith((".hook_in", ".hook_out"))]


def poison_hook(index, value: float = float("nan")):
    """A hook fn that writes ``value`` at ``index`` of a copy of its activation."""

    def poison(x, hook):
        x = x.clone()
        x[index] = value
        return x

    return poison


def assert_non_finite_refused(model, run, hook_name: str, *, index, value: float = float("nan"), match: str):
    """``run(fwd_hooks=...)`` with ``value`` planted at ``index`` of ``hook_name`` raises NonFiniteError
    matching ``match``, and leaves no hook on ``model``."""
    with pytest.raises(NonFiniteError, match=match):
        run(fwd_hooks=[(hook_name, poison_hook(index, value))])
    assert not hooks_left(model)


class SdpaSpy:
    """Counts calls of the fast attention path's kernel (so a test knows which path ran)."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = fa.F.scaled_dot_product_attention

        def spy(*a, **kw):
            self.calls += 1
            return real(*a, **kw)

        monkeypatch.setattr(fa.F, "scaled_dot_product_attention", spy)


def attention_layouts(*, drope_gain_seed: int = 0) -> dict[str, Callable[[Any, Any], Any]]:
    """Builders ``(tokenizer, tmp_path) -> HookedTransformer``, one tiny model per attention layout:
    RoPE/NoPE x GQA/MHA and a DroPE qk-norm checkpoint (its gains drawn from ``drope_gain_seed``)."""
    return {
        "rope_gqa": lambda tok, tmp: hooked_from_hf(tiny_llama(seed=1), tok),
        "rope_mha": lambda tok, tmp: hooked_from_hf(tiny_llama(seed=2, num_key_value_heads=4), tok),
        "nope_gqa": lambda tok, tmp: hooked_from_hf(tiny_llama(seed=3), tok, position_encoding="nope"),
        "nope_mha": lambda tok, tmp: hooked_from_hf(
            tiny_llama(seed=4, num_key_value_heads=4), tok, position_encoding="nope"
        ),
        "drope_qk_norm": lambda tok, tmp: qk_norm_drope_model(tok, tmp / "drope", gain_seed=drope_gain_seed),
    }
