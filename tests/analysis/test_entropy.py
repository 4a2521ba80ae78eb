"""Representation entropy (σ² unnormalised, σ normalised), anisotropy, compression valley."""

import math
import warnings

import numpy as np
import pytest
import torch

from drope_lens.analysis.entropy import spectrum_metrics
from drope_lens.analysis.profile_pass import phase_profile
from drope_lens.testing import analytic_sink_model
from tests.support import embedded_phase_case, hf_nope_twin

TEXTS = ["the cat saw the dog", "a big red car went fast on the long road to rome", "yes no"]


def _h(p):
    p = np.asarray(p, dtype=float)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def _with_singular_values(sigma, T, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(T, T, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    s = torch.zeros(T, d, dtype=torch.float64)
    s[range(len(sigma)), range(len(sigma))] = torch.tensor(sigma, dtype=torch.float64)
    return u @ s @ v.T


def test_known_spectrum():
    sigma = [10.0, 3.0, 1.0, 0.5, 0.0]  # T = 5 rows, one zero singular value
    x = _with_singular_values(sigma, 5, 12)
    h_sq, h_norm, aniso = spectrum_metrics(x)
    sq = np.square(sigma)
    assert h_sq == pytest.approx(_h(sq / sq.sum()), rel=1e-9)
    assert h_norm == pytest.approx(_h(np.array(sigma) / sum(sigma)) / math.log(5), rel=1e-6)
    assert aniso == pytest.approx(100.0 / sq.sum(), rel=1e-9)
    # More rows than columns: n = min(T, d) singular values.
    h_sq_t, h_norm_t, _ = spectrum_metrics(_with_singular_values(sigma[:4], 12, 4))
    assert h_sq_t == pytest.approx(_h(sq[:4] / sq[:4].sum()), rel=1e-9)
    assert h_norm_t == pytest.approx(_h(np.array(sigma[:4]) / sum(sigma[:4])) / math.log(4), rel=1e-6)


def test_matches_study_eigvalsh_formula_in_fp32():
    x = torch.randn(40, 64) * torch.linspace(0.1, 5.0, 64)
    x[0] *= 50.0  # a massive BOS row, as in the real models
    c = x @ x.T
    lam = torch.linalg.eigvalsh(c).flip(0).clamp(min=0)
    p = (lam / torch.trace(c)).clamp(min=1e-10)
    study_h = float(-(p * p.log()).sum())
    h_sq, _, aniso = spectrum_metrics(x)
    assert h_sq == pytest.approx(study_h, rel=1e-4)
    assert aniso == pytest.approx(float(p[0]), rel=1e-4)


@pytest.mark.parametrize("bad", ["nan", "zero"])
def test_degenerate_input_gives_nan_with_warning(bad):
    x = torch.zeros(6, 8) if bad == "zero" else torch.ones(6, 8)
    if bad == "nan":
        x[2, 3] = float("nan")
    with pytest.warns(RuntimeWarning):
        out = spectrum_metrics(x)
    assert all(math.isnan(v) for v in out)


def test_analytic_model_entropy_and_valley(tokenizer):
    model, _ = analytic_sink_model(tokenizer, [[0.0] * 4, [0.0] * 4], bos_scale=3.0)
    prof = phase_profile(model, TEXTS)
    for i, T in enumerate(prof.lengths):  # rows: 3·e_0 once, e_1 (T−1) times
        sigma = np.array([math.sqrt(T - 1), 3.0])
        sq = sigma**2
        assert np.allclose(prof.entropy_sq_per_text[i], _h(sq / sq.sum()), rtol=1e-6)
        assert np.allclose(prof.entropy_norm_per_text[i], _h(sigma / sigma.sum()) / math.log(T), rtol=1e-6)
        assert np.allclose(prof.anisotropy_per_text[i], sq.max() / sq.sum(), rtol=1e-6)
    s = prof.summary()
    assert s["min_entropy_sq"] == pytest.approx(prof.layer_stats()["entropy_sq"].min())
    assert s["min_entropy_sq_layer"] in (0, 1)


@pytest.mark.slow
def test_embedded_entropy_matches_hf_hidden_states(embedded_rope, embedded_nope, embedded_hf):
    for model, hf in ((embedded_rope, embedded_hf), (embedded_nope, hf_nope_twin(embedded_hf))):
        _, resid, final, refs = embedded_phase_case(model, hf)
        for i, r in enumerate(refs):
            for prof, states in ((final, r["hidden"][1:]), (resid, r["hidden"][1:-1] + [r["last_raw"]])):
                ref = []
                for x in states:  # independent: numpy SVD of the HF hidden states in float64
                    s = np.linalg.svd(x.numpy(), compute_uv=False)
                    p = s**2 / (s**2).sum()
                    ref.append((_h(p), _h(s / s.sum()) / math.log(len(s)), p[0]))
                ref = np.array(ref)
                np.testing.assert_allclose(prof.entropy_sq_per_text[i], ref[:, 0], rtol=1e-4)
                np.testing.assert_allclose(prof.entropy_norm_per_text[i], ref[:, 1], rtol=1e-4)
                np.testing.assert_allclose(prof.anisotropy_per_text[i], ref[:, 2], rtol=1e-4)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # real model: nothing degenerate
            s = resid.summary()
        assert s["min_entropy_sq"] == pytest.approx(np.min(resid.layer_stats()["entropy_sq"]))
