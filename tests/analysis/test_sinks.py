"""Attention sinks from hook_pattern: analytic model, HF eager reference, numerics, options."""

import functools

import numpy as np
import pytest
import torch

from drope_lens.analysis import sinks
from drope_lens.analysis.profile_pass import phase_profile
from drope_lens.loading import encode, hooked_from_hf
from drope_lens.testing import analytic_bos_attention, analytic_sink_model, scale_projection, tiny_llama
from tests.support import assert_non_finite_refused, embedded_phase_case, hf_nope_twin

TEXTS = ["the cat saw the dog", "a big red car went fast on the long road to rome", "yes no"]
LOGITS = [[0.0, 2.0, 5.0, -3.0], [1.0, -1.0, 0.5, 3.0]]


def _analytic_scores(lengths, include_bos_row):
    """[text, layer, head] known sink scores of analytic_sink_model(LOGITS) for texts of ``lengths`` tokens."""
    score = functools.partial(analytic_bos_attention, include_bos_row=include_bos_row)
    return np.array([[[score(b, n) for b in heads] for heads in LOGITS] for n in lengths])


@pytest.mark.parametrize("include_bos_row", [False, True])
def test_analytic_sink_scores_and_rates_are_exact(tokenizer, include_bos_row):
    model, _ = analytic_sink_model(tokenizer, LOGITS)
    batch = encode(tokenizer, TEXTS)  # right-padded: pads must not count
    prof = phase_profile(model, batch, tau=0.3, include_bos_row=include_bos_row, batch_size=3)
    T = batch.lengths.tolist()
    expected = _analytic_scores(T, include_bos_row)
    assert np.abs(prof.sink_scores_per_text - expected).max() <= 1e-6
    gu = _analytic_scores(T, True)
    assert np.abs(prof.gu_importance_per_text - gu).max() <= 1e-6
    rate = (expected >= 0.3).mean(-1).mean(0)
    assert np.array_equal(prof.layer_stats()["sink_rate"], rate)
    assert prof.summary()["gu_sink"] == pytest.approx((gu > 0.3).mean())
    # The analytic truth differs between the two row conventions (the BOS row adds A[0,0] = 1).
    other = _analytic_scores(T, not include_bos_row)
    assert np.abs(prof.sink_scores_per_text - other).max() > 1e-2


def test_uniform_attention_on_rope_model_gives_harmonic_scores(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=3), tokenizer)
    for layer in range(model.cfg.n_layers):
        scale_projection(model, layer, "q", 0.0)  # all scores 0 -> A[q, 0] = 1/(q+1), RoPE or not
    prof = phase_profile(model, TEXTS, batch_size=2)
    for i, n in enumerate(prof.lengths):
        assert np.abs(prof.sink_scores_per_text[i] - sinks.uniform_sink_score(n)).max() <= 1e-6
        assert np.abs(prof.gu_importance_per_text[i] - sinks.uniform_sink_score(n, include_bos_row=True)).max() <= 1e-6


def test_tau_is_inclusive_and_gu_is_strict():
    scores = torch.tensor([[0.3, 0.2999, 0.5, 0.3]], dtype=torch.float64)
    assert float(sinks.sink_rate(scores, 0.3)) == 0.75
    assert float(sinks.gu_sink_rate(scores, 0.3)) == 0.25


@pytest.mark.parametrize(
    "kw, msg",
    [
        (dict(tau=0.0), "tau"),
        (dict(tau=1.5), "tau"),
        (dict(gu_eps=-0.1), "gu_eps"),
        (dict(attention="eager"), "attention"),
        (dict(last_layer="norm"), "last_layer"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_options_are_refused(tokenizer, kw, msg):
    model, _ = analytic_sink_model(tokenizer, LOGITS)
    with pytest.raises(ValueError, match=msg):
        phase_profile(model, TEXTS, **kw)


def test_single_token_text_is_refused(tokenizer):
    model, bos = analytic_sink_model(tokenizer, LOGITS)
    with pytest.raises(ValueError, match="after BOS"):
        phase_profile(model, torch.tensor([[bos]]))


def test_pre_rope_manual_equals_native_for_nope_and_not_for_rope(tokenizer):
    nope = hooked_from_hf(tiny_llama(seed=4), tokenizer, position_encoding="nope")
    native = phase_profile(nope, TEXTS)
    manual = phase_profile(nope, TEXTS, attention="pre_rope_manual")
    assert np.abs(native.sink_scores_per_text - manual.sink_scores_per_text).max() <= 1e-6
    rope = hooked_from_hf(tiny_llama(seed=4), tokenizer)
    native = phase_profile(rope, TEXTS)
    manual = phase_profile(rope, TEXTS, attention="pre_rope_manual")
    assert np.abs(native.sink_scores_per_text - manual.sink_scores_per_text).max() > 1e-2  # bug B1
    # The BOS/entropy side does not depend on how patterns are read.
    assert np.array_equal(native.bos_norm_per_text, manual.bos_norm_per_text)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_nope_gives_finite_fp32_patterns(tokenizer, dtype):
    model = hooked_from_hf(tiny_llama(seed=6), tokenizer, position_encoding="nope", dtype=dtype)
    scale_projection(model, 0, "q", 200.0)
    scale_projection(model, 0, "k", 200.0)
    seen = {}

    def record(p, hook):
        seen["dtype"] = p.dtype

    prof = phase_profile(model, TEXTS, fwd_hooks=[("blocks.0.attn.hook_pattern", record)])
    assert seen["dtype"] == torch.float32
    assert np.isfinite(prof.sink_scores_per_text).all()
    assert np.isfinite(prof.bos_norm_per_text).all()


@pytest.mark.parametrize("check_finite", [True, False])
def test_injected_nan_is_reported_not_zeroed(tokenizer, check_finite):
    model = hooked_from_hf(tiny_llama(), tokenizer, position_encoding="nope")
    model.cfg.check_finite = check_finite  # False: TransformerLens zeroes NaN rows; we still refuse
    run = functools.partial(phase_profile, model, TEXTS)
    assert_non_finite_refused(model, run, "blocks.1.attn.hook_q", index=(0, 3, 1, 0), match="Layer 1")


@pytest.mark.slow
def test_embedded_sink_scores_match_hf_eager(embedded_rope, embedded_nope, embedded_hf):
    for model, hf in ((embedded_rope, embedded_hf), (embedded_nope, hf_nope_twin(embedded_hf))):
        _, prof, _, refs = embedded_phase_case(model, hf)
        # Independent: HF eager attention (output_attentions, fp32) of each unpadded text.
        excl = np.stack([np.stack([a[:, 1:, 0].mean(-1).numpy() for a in r["attentions"]]) for r in refs])
        incl = np.stack([np.stack([a[:, :, 0].mean(-1).numpy() for a in r["attentions"]]) for r in refs])
        assert np.abs(prof.sink_scores_per_text - excl).max() <= 1e-6  # BOS row excluded (default)
        assert np.abs(prof.gu_importance_per_text - incl).max() <= 1e-6  # all rows (Gu, study)
        assert np.array_equal(prof.layer_stats()["sink_rate"], (excl >= 0.3).mean(-1).mean(0))
