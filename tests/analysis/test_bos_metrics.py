"""BOS norm / ratio, spike-layer rules, peak BOS norm, last-layer conventions."""

import numpy as np
import pytest
import torch

from drope_lens.analysis import bos_metrics
from drope_lens.analysis.profile_pass import phase_profile
from drope_lens.loading import encode, hooked_from_hf
from drope_lens.testing import analytic_sink_model, tiny_llama
from tests.support import embedded_phase_case, hf_nope_twin

TEXTS = ["the cat saw the dog", "a big red car went fast on the long road to rome", "yes no"]
LOGITS = [[0.0, 2.0, 5.0, -3.0], [1.0, -1.0, 0.5, 3.0]]

# The study's per-layer mean BOS ratios (first layers) for RoPE: prose rule -> 0, code rule -> 1.
STUDY_ROPE_RATIO = [2.45, 107.9, 90.0, 80.0]


def test_spike_layer_rules():
    assert bos_metrics.spike_layer(STUDY_ROPE_RATIO, rule="argmax") == 1
    assert bos_metrics.spike_layer(STUDY_ROPE_RATIO, rule="first_above", threshold=2.0) == 0
    assert bos_metrics.spike_layer([1.0, 1.5, 1.9], rule="first_above") is None
    assert bos_metrics.spike_layer([1.0, 2.0, 2.5], rule="first_above") == 2  # strictly above
    with pytest.raises(ValueError, match="spike rule"):
        bos_metrics.spike_layer([1.0], rule="max")


def test_analytic_bos_norm_ratio_and_final_norm(tokenizer):
    model, bos = analytic_sink_model(tokenizer, LOGITS, bos_scale=3.0)
    with torch.no_grad():
        model.ln_final.w.fill_(0.5)
        model.ln_final.w[0] = 2.0  # the BOS direction
    resid = phase_profile(model, TEXTS, batch_size=2)
    assert np.allclose(resid.bos_norm_per_text, 3.0, atol=1e-6)
    assert np.allclose(resid.bos_ratio_per_text, 3.0, atol=1e-6)
    s = resid.summary()
    assert s["peak_bos_norm"] == pytest.approx(3.0) and s["spike_layer_first_above"] == 0
    final = phase_profile(model, TEXTS, last_layer="final_norm")
    d, eps = model.cfg.d_model, model.cfg.eps
    s_bos = 3.0 / np.sqrt(9.0 / d + eps)  # RMSNorm of 3·e_0, then gain 2
    s_other = 1.0 / np.sqrt(1.0 / d + eps)  # RMSNorm of e_1, then gain 0.5
    assert np.allclose(final.bos_norm_per_text[:, -1], 2.0 * s_bos, rtol=1e-5)
    assert np.allclose(final.bos_ratio_per_text[:, -1], 2.0 * s_bos / (0.5 * s_other), rtol=1e-5)
    assert np.array_equal(final.bos_norm_per_text[:, :-1], resid.bos_norm_per_text[:, :-1])


def test_padding_and_batch_size_do_not_change_results(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=2), tokenizer)
    a = phase_profile(model, TEXTS, batch_size=1)
    b = phase_profile(model, TEXTS, batch_size=3)
    for name in ("bos_norm_per_text", "bos_ratio_per_text", "entropy_sq_per_text", "sink_scores_per_text"):
        assert np.allclose(getattr(a, name), getattr(b, name), rtol=1e-5, atol=1e-7), name
    assert a.lengths == b.lengths == encode(tokenizer, TEXTS).lengths.tolist()  # input order kept


def test_nan_in_last_residual_is_recorded_as_nan(tokenizer):
    model = hooked_from_hf(tiny_llama(), tokenizer)

    def poison(x, hook):
        x = x.clone()
        x[0, 2, 5] = float("nan")
        return x

    with pytest.warns(RuntimeWarning, match="NaN"):
        prof = phase_profile(model, TEXTS, batch_size=3, fwd_hooks=[("blocks.1.hook_resid_post", poison)])
    row = prof.lengths.index(max(prof.lengths))  # batch row 0 = longest text (sorted batches)
    assert np.isnan(prof.bos_ratio_per_text[row, 1]) and np.isnan(prof.entropy_sq_per_text[row, 1])
    assert np.isfinite(prof.bos_norm_per_text[row, 1])  # BOS itself was untouched
    assert np.isfinite(np.delete(prof.bos_ratio_per_text[:, 1], row)).all()


@pytest.mark.hooked
def test_final_norm_refused_when_gain_folded(tokenizer):
    model = hooked_from_hf(tiny_llama(), tokenizer, process_weights=True)
    with pytest.raises(ValueError, match="final_norm"):
        phase_profile(model, TEXTS, last_layer="final_norm")


def _bos_ref(x):
    n = x.norm(dim=-1)
    return float(n[0]), float(n[0] / n[1:].mean())


@pytest.mark.slow
def test_embedded_bos_metrics_match_hf_hidden_states(embedded_rope, embedded_nope, embedded_hf):
    for model, hf in ((embedded_rope, embedded_hf), (embedded_nope, hf_nope_twin(embedded_hf))):
        batch, resid, final, refs = embedded_phase_case(model, hf)
        for i, r in enumerate(refs):
            raw = r["hidden"][1:-1] + [r["last_raw"]]  # HF hidden_states[-1] is the final norm
            ref = np.array([_bos_ref(x) for x in raw])
            np.testing.assert_allclose(resid.bos_norm_per_text[i], ref[:, 0], rtol=1e-4)
            np.testing.assert_allclose(resid.bos_ratio_per_text[i], ref[:, 1], rtol=1e-4)
            normed = _bos_ref(r["hidden"][-1])
            np.testing.assert_allclose(final.bos_norm_per_text[i, -1], normed[0], rtol=1e-4)
            np.testing.assert_allclose(final.bos_ratio_per_text[i, -1], normed[1], rtol=1e-4)
        # The final norm really is a different quantity from the raw residual (B14).
        assert abs(final.bos_norm_per_text[0, -1] / resid.bos_norm_per_text[0, -1] - 1) > 0.05
        s = resid.summary()
        assert s["spike_layer_argmax"] == int(np.argmax(resid.layer_stats()["bos_ratio"]))
