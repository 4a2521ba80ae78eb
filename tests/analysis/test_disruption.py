"""Disruption experiment: zeroing vs random controls, statistics against scipy/numpy/hand math."""

import json
import math

import numpy as np
import pytest
import scipy.stats

from drope_lens.analysis import stats
from drope_lens.analysis.disruption import compare_disruption, run_disruption
from drope_lens.analysis.massive import detect_massive
from drope_lens.analysis.perplexity import perplexity
from drope_lens.hooks.selection import random_control
from drope_lens.hooks.zeroing import zero_channel_hooks
from drope_lens.loading import hooked_from_hf, to_nope
from drope_lens.testing import TINY_TEXTS, plant_channels, tiny_llama
from tests.support import hooks_left

PLANTS = {"q": [(0, 1, 4), (1, 0, 2), (1, 3, 9)], "k": [(0, 0, 9), (1, 1, 3)]}
IDENTIFY = list(TINY_TEXTS[:3])
EVAL = list(TINY_TEXTS[3:])


@pytest.fixture(scope="module")
def planted(tokenizer):
    return plant_channels(hooked_from_hf(tiny_llama(seed=4), tokenizer), PLANTS, scale=30.0)


@pytest.fixture(scope="module")
def results(planted):
    kw = dict(identify_texts=IDENTIFY, eval_texts=EVAL, n_seeds=4, n_resamples=999)
    return run_disruption(planted, **kw), run_disruption(to_nope(planted), **kw)


def test_protocol(planted, results):
    rope, _ = results
    assert rope.n_massive == 5 and rope.random_overlap == [0, 0, 0, 0]
    assert rope.seeds == [42, 43, 44, 45] and rope.n_eval_texts == len(EVAL)
    # the pieces equal direct computations with the public building blocks
    sel = detect_massive(planted, IDENTIFY, tensors=("q", "k")).selection("mean_norm")
    assert sel.counts() == rope.massive_counts
    assert perplexity(planted, EVAL).ppl == pytest.approx(rope.base_ppl, rel=1e-9)
    assert perplexity(planted, EVAL, fwd_hooks=zero_channel_hooks(sel)).ppl == pytest.approx(rope.massive_ppl, rel=1e-9)
    ctrl = random_control(sel, seed=44)
    assert perplexity(planted, EVAL, fwd_hooks=zero_channel_hooks(ctrl)).ppl == pytest.approx(
        rope.random_ppls[2], rel=1e-9
    )
    assert abs(rope.massive_ppl - rope.base_ppl) > 1e-3 * rope.base_ppl  # (random weights: either sign)
    assert len(set(rope.random_ppls)) > 1  # seeds really draw different channels


def test_given_selection_and_baseline_reproduce_the_run(planted, results):
    """Reusing a saved selection (JSON round trip) and a baseline on a text subset changes nothing."""
    from drope_lens.analysis.perplexity import PerplexityResult
    from drope_lens.hooks.selection import ChannelSelection

    found = detect_massive(planted, IDENTIFY + EVAL, tensors=("q", "k"))
    sel = found.subset(range(len(IDENTIFY))).selection("mean_norm")
    sel = ChannelSelection.from_dict(json.loads(json.dumps(sel.to_dict())))
    both = perplexity(planted, IDENTIFY + EVAL)
    base = PerplexityResult.from_dict(json.loads(json.dumps(both.to_dict()))).subset(
        range(len(IDENTIFY), len(IDENTIFY) + len(EVAL))
    )
    again = run_disruption(
        planted, identify_texts=IDENTIFY, eval_texts=EVAL, n_seeds=4, n_resamples=999, massive=sel, baseline=base
    )
    ref = results[0]
    assert again.massive_counts == ref.massive_counts
    assert again.base_ppl == pytest.approx(ref.base_ppl, rel=1e-12)
    assert again.massive_ppl == ref.massive_ppl and again.random_ppls == ref.random_ppls
    assert again.settings["selection"] == "given" and ref.settings["selection"] == "detected"
    with pytest.raises(ValueError, match="not measured on these eval texts"):
        run_disruption(
            planted,
            identify_texts=IDENTIFY,
            eval_texts=EVAL,
            n_seeds=2,
            massive=sel,
            baseline=both.subset(range(len(IDENTIFY))),
        )
    with pytest.raises(ValueError, match="asks for rotary"):
        run_disruption(planted, eval_texts=EVAL, n_seeds=2, massive=sel, rotary="post")


def test_same_seeds_same_result(planted, results):
    again = run_disruption(planted, identify_texts=IDENTIFY, eval_texts=EVAL, n_seeds=4, n_resamples=999)
    assert again.random_ppls == results[0].random_ppls
    assert again.to_dict() == results[0].to_dict()


def test_statistics_equal_scipy_and_hand_math(results):
    r = results[0]
    m = np.full(4, (r.massive_ppl - r.base_ppl) / r.base_ppl * 100)
    rnd = (np.array(r.random_ppls) - r.base_ppl) / r.base_ppl * 100
    diff = m - rnd
    assert np.allclose(r.massive_pcts, m) and np.allclose(r.random_pcts, rnd)
    assert r.m_minus_r == pytest.approx(m.mean() - rnd.mean())
    ref = scipy.stats.ttest_rel(m, rnd)
    p = r.paired()
    assert p["t"] == pytest.approx(ref.statistic) and p["p"] == pytest.approx(ref.pvalue)
    hand_t = diff.mean() / (diff.std(ddof=1) / math.sqrt(len(diff)))
    assert p["t"] == pytest.approx(hand_t)
    assert r.cohens_d(0) == pytest.approx(diff.mean() / np.std(diff))
    assert r.cohens_d(1) == pytest.approx(diff.mean() / np.std(diff, ddof=1))
    assert r.random_std == pytest.approx(np.std(rnd))
    lo, hi = r.ci_m_minus_r()
    assert lo <= r.m_minus_r <= hi
    assert r.ci_random_mean() == r.ci_random_mean()  # seeded


def test_comparison(results):
    rope, nope = results
    cmp = compare_disruption(rope, nope)
    ref = scipy.stats.ttest_ind(rope.diffs, nope.diffs)
    ind = cmp.independent()
    assert ind["t"] == pytest.approx(ref.statistic) and ind["p"] == pytest.approx(ref.pvalue)
    assert cmp.ratio == pytest.approx(rope.m_minus_r / nope.m_minus_r)
    welch = compare_disruption(rope, nope, equal_var=False).independent()
    assert welch["t"] == pytest.approx(scipy.stats.ttest_ind(rope.diffs, nope.diffs, equal_var=False).statistic)
    d = cmp.to_dict()
    json.dumps(d)
    assert d["rope"]["m_minus_r"] == rope.m_minus_r and len(cmp.to_dataframe()) == 2
    assert len(rope.to_dataframe()) == 4 and "M-R ratio" in cmp.summary()


def test_eval_on_identify_reproduces_the_study_quirk(planted):
    r = run_disruption(planted, identify_texts=IDENTIFY, eval_on_identify=True, n_seeds=2, n_resamples=99)
    assert r.n_eval_texts == len(IDENTIFY) and r.settings["eval_on_identify"]
    assert r.base_ppl == pytest.approx(perplexity(planted, IDENTIFY).ppl)
    with pytest.raises(ValueError, match="not both"):
        run_disruption(planted, identify_texts=IDENTIFY, eval_texts=EVAL, eval_on_identify=True)


def test_token_inputs_equal_text_inputs(planted, tokenizer, results):
    """Models without a tokenizer (random-weight GPU shapes) pass token ids: same numbers as the texts."""
    from drope_lens.loading import encode

    kw = dict(n_seeds=4, n_resamples=999)
    ids = run_disruption(planted, identify_texts=encode(tokenizer, IDENTIFY), eval_texts=encode(tokenizer, EVAL), **kw)
    rope, _ = results
    assert ids.massive_counts == rope.massive_counts and ids.n_eval_texts == len(EVAL)
    assert ids.base_ppl == pytest.approx(rope.base_ppl, rel=1e-9)
    assert ids.massive_ppl == pytest.approx(rope.massive_ppl, rel=1e-9)
    assert ids.random_ppls == pytest.approx(rope.random_ppls, rel=1e-9)


def test_bad_options(planted, tokenizer):
    with pytest.raises(ValueError, match="n_seeds"):
        run_disruption(planted, identify_texts=IDENTIFY, eval_texts=EVAL, n_seeds=1)
    with pytest.raises(ValueError, match="aggregate"):
        run_disruption(planted, identify_texts=IDENTIFY, eval_texts=EVAL, aggregate="max")
    clean = hooked_from_hf(tiny_llama(seed=4), tokenizer)  # no massive channels at lambda = 5
    with pytest.raises(ValueError, match="No massive channels"):
        run_disruption(clean, identify_texts=IDENTIFY, eval_texts=EVAL, n_seeds=2)


def test_stats_helpers():
    assert np.isnan(stats.cohens_d([1.0, 1.0, 1.0]))
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    x = np.random.default_rng(1).normal(size=20)
    a = stats.bootstrap_ci(x, seed=3, n_resamples=999)
    assert a == stats.bootstrap_ci(x, seed=3, n_resamples=999)
    assert a[0] < x.mean() < a[1]
    assert stats.percent_increase(3.0, 2.0) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        stats.paired_test([1.0], [2.0])


def test_hooks_removed_when_disruption_raises(planted, monkeypatch):
    import drope_lens.analysis.disruption as mod

    calls = {"n": 0}
    real = mod.perplexity

    def flaky(model, texts, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # inside the first random control, hooks registered
            with model.hooks(fwd_hooks=kw.get("fwd_hooks", [])):
                raise RuntimeError("boom")
        return real(model, texts, **kw)

    monkeypatch.setattr(mod, "perplexity", flaky)
    with pytest.raises(RuntimeError, match="boom"):
        run_disruption(planted, identify_texts=IDENTIFY, eval_texts=EVAL, n_seeds=2)
    assert not hooks_left(planted)


@pytest.mark.slow
def test_embedded_pair_short_run(embedded_rope, embedded_nope):
    kw = dict(
        identify_texts=["The harbour was quiet at dawn, and the fishing boats rocked gently."],
        eval_texts=["A small dog chased the red ball across the garden and back again."],
        n_seeds=2,
        n_resamples=99,
        max_length=32,
    )
    rope = run_disruption(embedded_rope, **kw)
    nope = run_disruption(embedded_nope, **kw)
    cmp = compare_disruption(rope, nope)
    assert rope.n_massive > 0 and nope.n_massive > 0
    assert rope.random_overlap == [0, 0]
    assert rope.massive_pct > rope.random_mean  # zeroing massive Q/K hurts more than random
    json.dumps(cmp.to_dict())


def test_cli_detect_and_disrupt_json(tmp_path, tokenizer, capsys):
    import argparse

    from drope_lens.cli import detect, disrupt

    folder = tmp_path / "tiny"
    tiny_llama(seed=6).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    detect.add_parser(sub)
    disrupt.add_parser(sub)
    texts = sum([["--text", t] for t in TINY_TEXTS], [])
    args = parser.parse_args(["detect", "--rope", str(folder), "--threshold", "1.5", "--json", "-", *texts])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{\n") :])
    assert set(payload["models"]) == {"rope", "drope"} and payload["n_texts"] == len(TINY_TEXTS)
    assert payload["models"]["drope"]["position_encoding"] == "nope"
    assert set(payload["change_pct"]) == {"q", "k", "v"}
    args = parser.parse_args(
        [
            "disrupt",
            "--rope",
            str(folder),
            "--only",
            "rope",
            "--threshold",
            "1.5",
            "--n-seeds",
            "2",
            "--json",
            str(tmp_path / "d.json"),
            *texts[:4],
        ]
    )
    assert args.func(args) == 0
    saved = json.loads((tmp_path / "d.json").read_text())
    assert set(saved["models"]) == {"rope"} and saved["models"]["rope"]["n_eval_texts"] == 2
    assert len(saved["models"]["rope"]["random_pcts"]) == 2
