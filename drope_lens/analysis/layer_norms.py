"""Per-layer attention vs MLP output norms, Q/K/V norms and the attention fraction (study Exp 8–9).

Per text and layer, over the text's real tokens (BOS included, like the study; ``exclude_bos``
drops it), the mean over tokens of the per-token L2 norm of:

* ``attn``: ``blocks.l.hook_attn_out`` (attention-module output, after ``W_O``);
* ``mlp``: ``blocks.l.hook_mlp_out``;
* ``q``, ``k``, ``v``: ``hook_q/k/v`` flattened over heads (pre-RoPE, the study's ``q_proj`` outputs;
  K/V over the KV heads), and ``rot_q``, ``rot_k`` (post-RoPE, what attention uses).

Attention fraction: Exp 8's ``frac_per_text = attn / (attn + mlp)`` per text, then averaged over
texts; Exp 9's ``frac = mean(attn) / (mean(attn) + mean(mlp))``, a ratio of text averages. Both
are reported.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from jaxtyping import Float

from drope_lens.errors import NonFiniteError
from drope_lens.hooks.types import FwdHook, FwdHooks
from drope_lens.loading.forward import hooked_passes, model_label, to_batch
from drope_lens.options import DEFAULT_BATCH_SIZE
from drope_lens.validation import check_batch_size

QUANTITIES = ("attn", "mlp", "q", "k", "v", "rot_q", "rot_k")
_HOOKS = {
    "attn": "hook_attn_out",
    "mlp": "hook_mlp_out",
    "q": "attn.hook_q",
    "k": "attn.hook_k",
    "v": "attn.hook_v",
    "rot_q": "attn.hook_rot_q",
    "rot_k": "attn.hook_rot_k",
}


@dataclass
class LayerNorms:
    """Mean per-token L2 norms per text and layer for each of :data:`QUANTITIES`."""

    model: str
    norms: dict[str, Float[np.ndarray, "text layer"]]
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def attn_fraction(self) -> Float[np.ndarray, " layer"]:
        """Exp 9: ratio of the text averages."""
        a, m = self.norms["attn"].mean(0), self.norms["mlp"].mean(0)
        return a / (a + m)

    @property
    def attn_fraction_per_text(self) -> Float[np.ndarray, " layer"]:
        """Exp 8: per-text fraction, then averaged over texts."""
        a, m = self.norms["attn"], self.norms["mlp"]
        return (a / (a + m)).mean(0)

    def layer_means(self) -> dict[str, np.ndarray]:
        return {k: v.mean(0) for k, v in self.norms.items()}

    def summary(self) -> dict[str, Any]:
        f = self.attn_fraction
        out = {
            "model": self.model,
            "attn_fraction": f.tolist(),
            "attn_fraction_rest_mean": float(f[2:].mean()) if f.size > 2 else None,
        }
        for li in range(min(3, f.size)):
            out[f"layer{li}"] = {k: float(v[li]) for k, v in self.layer_means().items()}
            out[f"layer{li}"]["attn_fraction_per_text"] = float(self.attn_fraction_per_text[li])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "layer_means": {k: v.tolist() for k, v in self.layer_means().items()},
            "attn_fraction": self.attn_fraction.tolist(),
            "attn_fraction_per_text": self.attn_fraction_per_text.tolist(),
            "summary": self.summary(),
            "options": self.options,
        }

    def to_dataframe(self):
        """One row per layer: text-mean norms and both attention fractions."""
        import pandas as pd

        df = pd.DataFrame(self.layer_means())
        df.insert(0, "layer", range(len(df)))
        df.insert(0, "model", self.model)
        df["attn_fraction"] = self.attn_fraction
        df["attn_fraction_per_text"] = self.attn_fraction_per_text
        return df


@torch.no_grad()
def layer_norms(
    model,
    inputs,
    *,
    exclude_bos: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    max_length: Optional[int] = None,
    fwd_hooks: Sequence[FwdHook] = (),
) -> LayerNorms:
    """Per-layer mean token norms of attention/MLP outputs and Q/K/V (see the module docstring)."""
    check_batch_size(batch_size)
    batch = to_batch(model, inputs, max_length=max_length)
    start = 1 if exclude_bos else 0
    if int(batch.lengths.min()) <= start:
        raise ValueError("Every text needs a token after BOS when exclude_bos=True.")
    n, L = len(batch), model.cfg.n_layers
    norms = {q: np.full((n, L), np.nan) for q in QUANTITIES}
    lengths = batch.lengths.tolist()
    state: dict[str, Any] = {}

    def collect(x: torch.Tensor, hook, q: str) -> None:
        layer = hook.layer()
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        tok = flat.float().norm(dim=-1).double()  # [batch, pos]
        for row, text in enumerate(state["idx"]):
            vals = tok[row, start : lengths[text]]
            if not bool(torch.isfinite(vals).all()):
                raise NonFiniteError(f"Layer {layer}: {q} contains NaN/inf.")
            norms[q][text, layer] = float(vals.mean())

    hooks: FwdHooks = list(fwd_hooks)
    for li in range(L):
        for q, name in _HOOKS.items():
            hooks.append((f"blocks.{li}.{name}", functools.partial(collect, q=q)))
    hooked_passes(model, batch, hooks, state, batch_size=batch_size)
    return LayerNorms(
        model=model_label(model), norms=norms, options={"exclude_bos": exclude_bos, "max_length": max_length}
    )
