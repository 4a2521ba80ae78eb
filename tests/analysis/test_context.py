"""The context-length experiment against independent Hugging Face computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from drope_lens.analysis.context import (
    ContextExperiment,
    context_experiment,
    long_text_tokens,
    pair_context_experiment,
    training_context,
)
from drope_lens.loading import ModelPair, encode, hooked_from_hf, to_nope
from drope_lens.testing import hf_nope_reference, tiny_llama

LENGTHS = [80, 160]


@pytest.fixture(scope="module")
def pair(tokenizer):
    rope = hooked_from_hf(tiny_llama(seed=8), tokenizer)
    return ModelPair(rope, to_nope(rope))


@pytest.fixture(scope="module")
def result(pair):
    return pair_context_experiment(pair, LENGTHS, depths=(0.2, 0.8), n_per_depth=2, seed=3)


def _hf_reference(hf, ids, tau=0.3, threshold=5.0):
    """PPL, sink rate and massive Q/K counts of one text from a plain HF eager forward."""
    q_out, k_out = {}, {}
    handles = []
    for i, layer in enumerate(hf.model.layers):
        handles.append(
            layer.self_attn.q_proj.register_forward_hook(lambda m, a, o, i=i: q_out.__setitem__(i, o.detach()))
        )
        handles.append(
            layer.self_attn.k_proj.register_forward_hook(lambda m, a, o, i=i: k_out.__setitem__(i, o.detach()))
        )
    try:
        with torch.no_grad():
            out = hf(ids, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    logp = out.logits[0, :-1].double().log_softmax(-1)
    nll = -logp.gather(-1, ids[0, 1:, None]).sum()
    ppl = math.exp(float(nll) / (ids.shape[1] - 1))
    rates = [float((a[0, :, 1:, 0].double().mean(-1) >= tau).double().mean()) for a in out.attentions]
    counts = {}
    for name, acts in (("q", q_out), ("k", k_out)):
        total = 0
        for i in range(len(hf.model.layers)):
            m = acts[i][0].double().norm(dim=0)  # L2 over tokens per channel (head*d_head)
            total += int((m > threshold * m.mean()).sum())
        counts[name] = total
    return ppl, float(np.mean(rates)), counts


def test_metrics_equal_hf_reference(result, tokenizer):
    for role, hf in (("rope", tiny_llama(seed=8).eval()), ("drope", hf_nope_reference(tiny_llama(seed=8)).eval())):
        hf.config._attn_implementation = "eager"
        exp = getattr(result, role)
        for p in exp.points:
            ids = long_text_tokens(tokenizer, p.length, seed=3)
            ppl, rate, counts = _hf_reference(hf, ids)
            assert p.ppl == pytest.approx(ppl, rel=1e-4)
            assert p.sink_rate == pytest.approx(rate, abs=1e-12)
            assert (p.massive_q, p.massive_k) == (counts["q"], counts["k"])


def test_passkey_accuracy_equals_hf_greedy(result, pair, tokenizer):
    """Recompute each prompt's answer with HF greedy decoding (no cache sharing, one by one)."""
    import random

    from drope_lens.tasks import parsing
    from drope_lens.tasks.passkey import build_prompt, make_keys

    hf = tiny_llama(seed=8).eval()
    exp = result.rope
    for p in exp.points:
        for d in exp.depths:
            keys = make_keys(2, 3 * 1_000_003 + p.length * 101 + int(round(d * 1000)))
            correct = 0
            for i, key in enumerate(keys):
                it = build_prompt(tokenizer, key, p.length, d, random.Random(f"context-passkey-3-{p.length}-{d}-{i}"))
                assert abs(it.meta["n_tokens"] - p.length) <= 0.02 * p.length
                ids = encode(tokenizer, it.text).tokens
                with torch.no_grad():
                    gen = hf.generate(
                        ids, max_new_tokens=12, do_sample=False, eos_token_id=None, pad_token_id=tokenizer.pad_token_id
                    )
                text = tokenizer.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)
                # drope_lens stops once the key's digits are out; the first number decides
                correct += parsing.passkey_exact(text, key)
            assert p.passkey_by_depth[d] == correct / 2


def test_result_exports_and_is_seeded(result, pair):
    d = json.loads(json.dumps(result.to_dict()))
    assert [p["length"] for p in d["rope"]["points"]] == LENGTHS
    assert d["drope"]["position_encoding"] == "nope"
    assert d["rope"]["training_context"] == training_context(pair.rope) == pair.rope.cfg.n_ctx
    df = result.to_dataframe()
    assert len(df) == 2 * len(LENGTHS) and {"passkey_depth_0.2", "ppl", "sink_rate"} <= set(df.columns)
    assert isinstance(result.rope, ContextExperiment) and result.rope.metric("ppl")[0] > 0
    again = context_experiment(pair.rope, LENGTHS, depths=(0.2, 0.8), n_per_depth=2, seed=3)
    assert [p.to_dict() | {"seconds": 0} for p in again.points] == [
        p.to_dict() | {"seconds": 0} for p in result.rope.points
    ]
    assert not torch.equal(
        long_text_tokens(pair.rope.tokenizer, 100, seed=0), long_text_tokens(pair.rope.tokenizer, 100, seed=1)
    )


def test_long_text_is_exact_length_with_bos(tokenizer):
    ids = long_text_tokens(tokenizer, 500, seed=0)
    assert ids.shape == (1, 500) and int(ids[0, 0]) == tokenizer.bos_token_id


@pytest.mark.parametrize(
    "kw,msg",
    [
        (dict(lengths=[]), "non-empty"),
        (dict(lengths=[10]), ">= 64"),
        (dict(lengths=[100, 100]), "duplicates"),
        (dict(lengths=[100], depths=[1.5]), "depths"),
        (dict(lengths=[100], n_per_depth=-1), "n_per_depth"),
        (dict(lengths=[100], tau=0.0), "tau"),
        (dict(lengths=[10_000]), "beyond_context"),
    ],
)
def test_bad_options_are_refused(pair, kw, msg):
    with pytest.raises(ValueError, match=msg):
        context_experiment(pair.rope, **kw)


def test_beyond_context_restores_n_ctx(tokenizer):
    model = hooked_from_hf(tiny_llama(seed=8, max_position_embeddings=128), tokenizer, position_encoding="nope")
    res = context_experiment(model, [200], n_per_depth=0, beyond_context=True)
    assert model.cfg.n_ctx == 128 and res.training_context == 128
    assert math.isnan(res.points[0].passkey_accuracy) and res.points[0].ppl > 0


def test_figure_and_cli(result, tmp_path, monkeypatch, pair, capsys):
    from drope_lens.views.context_figure import plot_context

    d = result.to_dict()
    fig = plot_context({"a": d["rope"], "b": d["drope"]})
    assert len([ax for ax in fig.axes if ax.get_visible()]) == 6
    assert any(
        abs(line.get_xdata()[0] - d["rope"]["training_context"]) < 1e-9
        for line in fig.axes[0].lines
        if len(line.get_xdata()) == 2
    )
    from drope_lens.cli import main

    monkeypatch.setattr("drope_lens.cli.context.load_pair_from_args", lambda args: pair)
    out = tmp_path / "ctx.json"
    png = tmp_path / "ctx.png"
    assert main(["context", "--lengths", "80", "--n-per-depth", "1", "--json", str(out), "--figure", str(png)]) == 0
    assert json.loads(out.read_text())["rope"]["points"][0]["length"] == 80 and png.stat().st_size > 0
    assert main(["context", "--lengths", "8"]) == 1  # refused before loading
    assert ">= 64" in capsys.readouterr().err


def test_report_context_step(pair, tmp_path, monkeypatch):
    from drope_lens.options import REPORT_CONTEXT
    from drope_lens.report.runner import ReportOptions, run_report
    from drope_lens.report.schema import validate_results

    monkeypatch.setattr("drope_lens.options.REPORT_CONTEXT", REPORT_CONTEXT.replace(lengths=(80, 120)))
    res = run_report(pair, tmp_path, ReportOptions(steps=("context",), max_length=48), progress=False)
    validate_results(res)
    assert [p["length"] for p in res["experiments"]["context"]["rope"]["points"]] == [80, 120]
    assert "figures/context_length.png" in res["files"]["figures"]
    assert "## Context length" in (tmp_path / "report.md").read_text()
    quick = run_report(pair, tmp_path / "q", ReportOptions(steps=("context",), quick=True), progress=False)
    assert "context" not in quick["steps"]  # off in --quick
