"""Streamed sink scores (query chunks from hook_rot_q/k) equal the hook_pattern ones."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch

from drope_lens.analysis.interventions import phase_experiment
from drope_lens.analysis.profile_pass import phase_profile
from drope_lens.analysis.stream_sinks import first_column
from drope_lens.hooks.conditions import condition_hooks
from drope_lens.loading import attention_scale, encode, hooked_from_hf
from drope_lens.testing import TINY_TEXTS, analytic_bos_attention, analytic_sink_model, tiny_llama
from tests.support import SdpaSpy, assert_non_finite_refused, attention_layouts

TEXTS = list(TINY_TEXTS) + ["the cat", "a b"]  # lengths differ: right padding inside a batch


MODELS = attention_layouts(drope_gain_seed=1)


@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("chunk", [1, 3, None])
def test_first_column_equals_hook_pattern(kind, chunk, tokenizer, tmp_path):
    model = MODELS[kind](tokenizer, tmp_path)
    batch = encode(tokenizer, TEXTS)
    _, cache = model.run_with_cache(
        batch.tokens, names_filter=lambda n: n.endswith(("hook_rot_q", "hook_rot_k", "hook_pattern"))
    )
    rows = batch.mask[:, None, :]  # real query rows
    for layer in range(model.cfg.n_layers):
        col = first_column(
            cache["rot_q", layer],
            cache["rot_k", layer],
            batch.lengths,
            attention_scale(model, layer),
            chunk=chunk,
        )
        ref = cache["pattern", layer][..., 0]
        assert (col - ref).abs()[rows.expand_as(col)].max() <= 1e-6


@pytest.mark.parametrize("include_bos_row", [False, True])
def test_profile_stream_equals_pattern_path(include_bos_row, tokenizer, tmp_path, monkeypatch):
    spy = SdpaSpy(monkeypatch)
    for kind, make in MODELS.items():
        model = make(tokenizer, tmp_path / kind)
        spy.calls = 0
        stream = phase_profile(model, TEXTS, include_bos_row=include_bos_row, batch_size=3)
        n_batches = math.ceil(len(TEXTS) / 3)
        assert spy.calls == n_batches * model.cfg.n_layers  # the model kept its fast attention
        ref = phase_profile(model, TEXTS, include_bos_row=include_bos_row, batch_size=3, sinks_from="pattern")
        assert stream.sinks_from == "stream" and ref.sinks_from == "pattern"
        assert np.abs(stream.sink_scores_per_text - ref.sink_scores_per_text).max() <= 1e-6, kind
        assert np.abs(stream.gu_importance_per_text - ref.gu_importance_per_text).max() <= 1e-6, kind
        for name in ("bos_norm_per_text", "bos_ratio_per_text", "entropy_sq_per_text"):
            np.testing.assert_allclose(getattr(stream, name), getattr(ref, name), rtol=1e-5, atol=1e-6)
        s, r = stream.summary(), ref.summary()
        for key in ("mean_sink_rate", "gu_sink", "spike_layer_argmax", "spike_layer_first_above"):
            assert s[key] == r[key], (kind, key)


@pytest.mark.parametrize("include_bos_row", [False, True])
def test_stream_gives_closed_form_scores(include_bos_row, tokenizer):
    logits = [[2.0, 0.0, -1.0, 3.0], [1.0, 4.0, 0.5, -2.0]]
    model, bos = analytic_sink_model(tokenizer, logits)
    prof = phase_profile(model, TEXTS, include_bos_row=include_bos_row)
    for t, n in enumerate(prof.lengths):
        for layer, heads in enumerate(logits):
            for h, b in enumerate(heads):
                want = analytic_bos_attention(b, n, include_bos_row=include_bos_row)
                assert abs(prof.sink_scores_per_text[t, layer, h] - want) <= 1e-6


def test_stream_under_an_intervention_equals_pattern_path(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=3), tokenizer)
    hooks = condition_hooks(model, "qk")
    a = phase_profile(model, TEXTS, fwd_hooks=hooks)
    b = phase_profile(model, TEXTS, fwd_hooks=hooks, sinks_from="pattern")
    assert np.abs(a.sink_scores_per_text - b.sink_scores_per_text).max() <= 1e-6

    # an intervention that writes the pattern itself makes the profile read the real pattern
    def flatten(p, hook):
        return torch.tril(torch.ones_like(p)) / torch.tril(torch.ones_like(p)).sum(-1, keepdim=True)

    c = phase_profile(model, TEXTS, fwd_hooks=[("blocks.0.attn.hook_pattern", flatten)])
    assert c.sinks_from == "pattern"
    want = np.mean([1.0 / (q + 1) for q in range(1, c.lengths[0])])
    assert abs(c.sink_scores_per_text[0, 0, 0] - want) <= 1e-6


def test_phase_experiment_numbers_do_not_change(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=4), tokenizer)
    kw = dict(conditions=("baseline", "qk"), profile_conditions=True, batch_size=4)
    a = phase_experiment(model, TEXTS, **kw).to_dict()
    b = phase_experiment(model, TEXTS, sinks_from="pattern", **kw).to_dict()
    for cond in ("baseline", "qk"):
        pa, pb = a["conditions"][cond]["profile"], b["conditions"][cond]["profile"]
        assert np.abs(np.array(pa["sink_score"]) - np.array(pb["sink_score"])).max() <= 1e-6
        assert pa["layers"]["sink_rate"] == pb["layers"]["sink_rate"]
        assert abs(a["conditions"][cond]["ppl"]["ppl"] - b["conditions"][cond]["ppl"]["ppl"]) <= 1e-4


def test_bad_source_and_nan_are_refused(tokenizer):
    model = hooked_from_hf(tiny_llama(), tokenizer, position_encoding="nope")
    with pytest.raises(ValueError, match="sinks_from"):
        phase_profile(model, TEXTS, sinks_from="fast")
    run = functools.partial(phase_profile, model, TEXTS)
    assert_non_finite_refused(
        model, run, "blocks.1.attn.hook_rot_k", index=(0, 2, 0, 0), value=float("inf"), match="Layer 1"
    )


@pytest.mark.slow
def test_embedded_heldout_phase_numbers_unchanged(embedded_rope, embedded_nope):
    from drope_lens.data.texts import builtin_split

    texts = builtin_split()["eval"]
    for model in (embedded_rope, embedded_nope):
        a = phase_profile(model, texts, max_length=256, batch_size=5)
        b = phase_profile(model, texts, max_length=256, batch_size=5, sinks_from="pattern")
        assert np.abs(a.sink_scores_per_text - b.sink_scores_per_text).max() <= 1e-6
        assert np.abs(a.gu_importance_per_text - b.gu_importance_per_text).max() <= 1e-6
        sa, sb = a.summary(), b.summary()
        for key in (
            "mean_sink_rate",
            "gu_sink",
            "spike_layer_argmax",
            "spike_layer_first_above",
            "peak_bos_layer",
            "min_entropy_sq_layer",
        ):
            assert sa[key] == sb[key], key
        np.testing.assert_allclose(a.bos_ratio_per_text, b.bos_ratio_per_text, rtol=1e-4)
