"""Hooks that reduce attention and residuals to the phase profile's per-text numbers as they pass.

Sink scores and Gu importance are streamed from every layer's ``hook_rot_q/k`` in query chunks
(:mod:`drope_lens.analysis.stream_sinks`) or read from ``blocks.{l}.attn.hook_pattern``; BOS
norm/ratio, entropy and anisotropy from every ``blocks.{l}.hook_resid_post`` (or, for the last
layer with ``last_layer="final_norm"``, the final RMSNorm output with its gain). Nothing is cached.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from drope_lens.analysis import bos_metrics, entropy, sinks
from drope_lens.hooks.types import FwdHooks
from drope_lens.loading.backend import Model
from drope_lens.loading.surface import attention_scale, final_norm_gain


class ProfileCollector:
    """Hook functions that reduce patterns and residuals to per-text numbers as they pass."""

    def __init__(
        self,
        model: Model,
        n_texts: int,
        *,
        include_bos_row: bool,
        last_layer: str,
        attention: str,
        sinks_from: str = "stream",
    ):
        cfg = model.cfg
        self.model, self.include_bos_row, self.attention = model, include_bos_row, attention
        self.stream = None
        if attention == "native" and sinks_from == "stream":
            from drope_lens.analysis.stream_sinks import SinkStream

            self.stream = SinkStream(model, self._column)
        self.last_layer = last_layer
        L, H = cfg.n_layers, cfg.n_heads
        self.sink = np.full((n_texts, L, H), np.nan)
        self.gu = np.full((n_texts, L, H), np.nan)
        self.bos_norm = np.full((n_texts, L), np.nan)
        self.bos_ratio = np.full((n_texts, L), np.nan)
        self.h_sq = np.full((n_texts, L), np.nan)
        self.h_norm = np.full((n_texts, L), np.nan)
        self.aniso = np.full((n_texts, L), np.nan)
        self.idx: list[int] = []
        self.lengths = torch.zeros(0, dtype=torch.long)
        self._qk: dict[str, torch.Tensor] = {}
        if attention == "pre_rope_manual":
            self.attn_scale = attention_scale(model, 0)

    def set_batch(self, idx: list[int], lengths: torch.Tensor) -> None:
        self.idx, self.lengths = idx, lengths.cpu()
        if self.stream is not None:
            self.stream.set_lengths(lengths)

    # ---- attention -------------------------------------------------------------------------
    def _stash(self, x: torch.Tensor, hook) -> None:
        self._qk[hook.name.rsplit("_", 1)[1]] = x.detach()

    def _pattern(self, pattern: torch.Tensor, hook) -> None:
        layer = hook.layer()
        if self.attention == "pre_rope_manual":
            pattern = sinks.manual_pre_rope_pattern(self._qk.pop("q"), self._qk.pop("k"), self.attn_scale)
        lengths = self.lengths.to(pattern.device)
        sinks.check_pattern(pattern, lengths, layer)
        scores = sinks.sink_scores(pattern, lengths, include_bos_row=self.include_bos_row)
        gu = sinks.gu_importance(pattern, lengths)
        self.sink[self.idx, layer] = scores.cpu().numpy()
        self.gu[self.idx, layer] = gu.cpu().numpy()

    def _column(self, col0: torch.Tensor, layer: int) -> None:
        """Streaming path: ``A[:, :, q, 0]`` of one layer (see :mod:`.stream_sinks`)."""
        lengths = self.lengths.to(col0.device)
        self.sink[self.idx, layer] = (
            sinks.sink_scores_from_column(col0, lengths, include_bos_row=self.include_bos_row).cpu().numpy()
        )
        self.gu[self.idx, layer] = sinks.sink_scores_from_column(col0, lengths, include_bos_row=True).cpu().numpy()

    # ---- residual stream ------------------------------------------------------------------
    def _resid(self, resid: torch.Tensor, hook, layer: Optional[int] = None) -> None:
        if layer is None:
            layer = hook.layer()
        if hook.name == "ln_final.hook_normalized":
            gain = final_norm_gain(self.model)
            assert gain is not None  # refused before the pass (profile_pass._check_options)
            resid = resid.to(self.model.cfg.dtype) * gain
        lengths = self.lengths.to(resid.device)
        bos, other = bos_metrics.bos_norms(resid, lengths)
        self.bos_norm[self.idx, layer] = bos.cpu().numpy()
        self.bos_ratio[self.idx, layer] = (bos / other).cpu().numpy()
        for row, text in enumerate(self.idx):
            n = int(self.lengths[row])
            self.h_sq[text, layer], self.h_norm[text, layer], self.aniso[text, layer] = entropy.spectrum_metrics(
                resid[row, :n], where=f"layer {layer}, text {text}"
            )

    def hooks(self) -> FwdHooks:
        L = self.model.cfg.n_layers
        hooks: FwdHooks = []
        for layer in range(L):
            if self.attention == "pre_rope_manual":
                hooks += [(f"blocks.{layer}.attn.hook_q", self._stash), (f"blocks.{layer}.attn.hook_k", self._stash)]
            if self.stream is None:
                hooks.append((f"blocks.{layer}.attn.hook_pattern", self._pattern))
            if layer < L - 1 or self.last_layer == "resid":
                hooks.append((f"blocks.{layer}.hook_resid_post", self._resid))
        if self.last_layer == "final_norm":
            hooks.append(("ln_final.hook_normalized", lambda x, hook: self._resid(x, hook, layer=L - 1)))
        if self.stream is not None:
            hooks += self.stream.hooks()
        return hooks
