"""The study's Exp 5–9 done right: head classes, BOS write, layer ablations, layer norms."""

import math

import numpy as np
import pytest
import torch

from drope_lens.analysis.bos_write import bos_v_ablation_hooks, bos_write, bos_write_experiment, bos_write_from
from drope_lens.analysis.head_classes import CLASSES, classify_heads, head_classes, pattern_metrics
from drope_lens.analysis.layer_ablation import layer_ablation, layer_ablation_hooks
from drope_lens.analysis.layer_norms import layer_norms
from drope_lens.loading import encode, hooked_from_hf
from drope_lens.testing import (
    TINY_TEXTS,
    analytic_bos_attention,
    analytic_sink_model,
    embedding_matrix,
    norm_gain,
    projection_heads,
    tiny_llama,
)
from tests.support import EMBEDDED_TEXTS

T = 12


def causal(rows):
    return torch.stack(rows)[None].double()


def bos_pattern(n=T):
    p = torch.zeros(n, n)
    p[:, 0] = 1
    return p


def prev_pattern(n=T):
    p = torch.zeros(n, n)
    p[0, 0] = 1
    for q in range(1, n):
        p[q, q - 1] = 1
    return p


def uniform_pattern(n=T):
    return torch.tril(torch.ones(n, n)) / torch.arange(1, n + 1)[:, None]


@pytest.fixture(scope="module")
def model(tokenizer):
    return hooked_from_hf(tiny_llama(seed=5, num_hidden_layers=3), tokenizer)


# ------------------------------------------------------------------ Exp 7: head classes
def test_pattern_metrics_known_patterns():
    p = torch.stack([bos_pattern(), prev_pattern(), uniform_pattern()])
    m = pattern_metrics(p, window=5, max_distance=20)
    q = torch.arange(1, T, dtype=torch.float64)
    # BOS head: all attention on key 0, zero entropy; the window holds BOS only for q <= 5
    assert m["bos"][0] == 1.0 and m["entropy"][0] == 0.0
    assert m["local"][0] == pytest.approx(float((q <= 5).double().mean()))
    # previous-token head: BOS only from row 1; everything in the window
    assert m["bos"][1] == pytest.approx(1 / (T - 1)) and m["local"][1] == 1.0
    assert m["decay"][1, 1] == 1.0 and m["decay"][1, 2] == 0.0
    assert m["decay"][1, 0] == pytest.approx(1 / T)  # only row 0 attends to itself
    # uniform causal head: closed forms
    assert m["bos"][2] == pytest.approx(float((1 / (q + 1)).mean()))
    assert m["local"][2] == pytest.approx(float((torch.clamp(q, max=5) / (q + 1)).mean()))
    allq = torch.arange(T, dtype=torch.float64)
    assert m["entropy"][2] == pytest.approx(float(torch.log(allq + 1).mean()))
    assert m["decay"][2, 3] == pytest.approx(float((1 / (torch.arange(3, T) + 1.0)).mean()))
    assert torch.isnan(m["decay"][:, T:]).all()  # no row that far back
    with_bos = pattern_metrics(p, include_bos_row=True)
    assert with_bos["bos"][1] == pytest.approx(2 / T)


def test_classify_heads_rule():
    bos = torch.tensor([[0.9, 0.3, 0.1, 0.1, 0.1]])
    local = torch.tensor([[0.9, 0.0, 0.3, 0.1, 0.1]])
    ent = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.5]])  # layer median 0.0 -> 2.0, 0.5 above
    cls = classify_heads(bos, local, ent)
    assert [CLASSES[i] for i in cls[0]] == ["sink", "sink", "local", "distributed", "distributed"]
    ent2 = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.5, 1.0]])
    cls2 = classify_heads(torch.zeros(1, 6), torch.zeros(1, 6), ent2)  # median 0.25
    assert [CLASSES[i] for i in cls2[0]] == ["mixed", "mixed", "mixed", "distributed", "distributed", "distributed"]
    stricter = classify_heads(bos, local, ent, sink_threshold=0.5, local_threshold=0.95)
    assert CLASSES[stricter[0, 1]] != "sink" and CLASSES[stricter[0, 0]] == "sink"


ANALYTIC_LOGITS = [[4.0, 2.0, -1.0, -3.0], [0.0, 5.0, -5.0, 1.0]]  # [layer][head] BOS logit b


def _analytic_case(tokenizer, text):
    """:func:`analytic_sink_model` of ANALYTIC_LOGITS, its BOS id and the token count of ``text``."""
    m, bos = analytic_sink_model(tokenizer, ANALYTIC_LOGITS)
    return m, bos, int(encode(tokenizer, [text]).lengths[0])


def test_head_classes_analytic_sinks(tokenizer):
    """A[q, 0] = e^b / (e^b + q): the BOS metric and the classes follow in closed form."""
    text = TINY_TEXTS[0]
    m, _, n = _analytic_case(tokenizer, text)
    res = head_classes(m, [text])
    for layer, row in enumerate(ANALYTIC_LOGITS):
        for h, b in enumerate(row):
            expect = analytic_bos_attention(b, n)
            assert res.bos[0, layer, h] == pytest.approx(expect, rel=1e-5)
            if expect >= 0.3:
                assert CLASSES[res.classes[layer, h]] == "sink"
    assert sum(res.counts().values()) == 8
    assert len(res.to_dataframe()) == 8 and res.layer_counts().shape == (2, 4)


def test_head_classes_padding(model):
    a = head_classes(model, list(TINY_TEXTS), batch_size=5)
    b = head_classes(model, list(TINY_TEXTS), batch_size=1)
    np.testing.assert_allclose(a.entropy, b.entropy, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(a.local, b.local, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(a.classes, b.classes)


# ------------------------------------------------------------------ Exp 5: BOS write
def test_bos_write_from_known_pattern():
    pattern = torch.stack([bos_pattern(4), uniform_pattern(4)])[None]  # 2 heads
    v = torch.zeros(1, 4, 1, 3)  # one KV head shared by both (GQA)
    v[0, 0, 0] = torch.tensor([3.0, 4.0, 0.0])
    v[0, 1:, 0] = 100.0  # other positions do not matter
    attn, vn, w = bos_write_from(pattern, v, torch.tensor([4]))
    assert attn[0].tolist() == pytest.approx([1.0, (1 / 2 + 1 / 3 + 1 / 4) / 3])
    assert vn[0].tolist() == [5.0, 5.0]
    assert w[0].tolist() == pytest.approx([5.0, 5.0 * (1 / 2 + 1 / 3 + 1 / 4) / 3])


def test_bos_write_analytic_model(tokenizer):
    text = TINY_TEXTS[2]
    m, bos, n = _analytic_case(tokenizer, text)
    res = bos_write(m, [text])
    cfg = m.cfg
    x0 = embedding_matrix(m)[bos].detach().double()
    for layer in range(cfg.n_layers):
        ln = x0 / torch.sqrt((x0**2).mean() + cfg.eps) * norm_gain(m, layer).detach().double()
        W_V = projection_heads(m, layer, "v").double()  # [kv_head, d_model, d_head]; Llama: no bias
        for h in range(cfg.n_heads):
            g = h // (cfg.n_heads // cfg.n_key_value_heads)
            vnorm = float((ln @ W_V[g]).norm())
            attn = analytic_bos_attention(ANALYTIC_LOGITS[layer][h], n)
            assert res.v_norm[0, layer, h] == pytest.approx(vnorm, rel=1e-5)
            assert res.write[0, layer, h] == pytest.approx(vnorm * attn, rel=1e-5)


def test_bos_v_ablation(model, tokenizer):
    toks = encode(tokenizer, [TINY_TEXTS[3]]).tokens
    with model.hooks(fwd_hooks=bos_v_ablation_hooks(model, 1)):
        _, cache = model.run_with_cache(toks)
    _, ref = model.run_with_cache(toks)
    assert float(cache["blocks.1.attn.hook_v"][0, 0].abs().max()) == 0.0
    torch.testing.assert_close(cache["blocks.1.attn.hook_v"][0, 1:], ref["blocks.1.attn.hook_v"][0, 1:])
    torch.testing.assert_close(cache["blocks.0.attn.hook_v"], ref["blocks.0.attn.hook_v"])
    res = bos_write_experiment(model, list(TINY_TEXTS))
    assert set(res.ppl) == {"baseline", "spike", "all"}
    assert res.options["ablation_layer"] == res.spike_layer
    assert not math.isclose(res.ppl["all"].ppl, res.ppl["baseline"].ppl, rel_tol=1e-4)


# ------------------------------------------------------------------ Exp 6: layer ablation
def test_layer_ablation_hooks(model, tokenizer):
    toks = encode(tokenizer, [TINY_TEXTS[1]]).tokens
    with model.hooks(fwd_hooks=layer_ablation_hooks(model, 1, "both")):
        _, c = model.run_with_cache(toks)
    torch.testing.assert_close(c["blocks.1.hook_resid_post"], c["blocks.1.hook_resid_pre"])
    with model.hooks(fwd_hooks=layer_ablation_hooks(model, 1, "bos_only")):
        _, b = model.run_with_cache(toks)
    _, ref = model.run_with_cache(toks)
    torch.testing.assert_close(b["blocks.1.hook_resid_post"][0, 0], ref["blocks.1.hook_resid_pre"][0, 0])
    torch.testing.assert_close(b["blocks.1.hook_mlp_out"][0, 1:].abs().sum() > 0, torch.tensor(True))
    with pytest.raises(ValueError, match="condition"):
        layer_ablation_hooks(model, 1, "heads")
    with pytest.raises(ValueError, match="out of range"):
        layer_ablation_hooks(model, 9, "mlp")


def test_layer_ablation_ppl(model):
    res = layer_ablation(model, list(TINY_TEXTS), layer=1)
    assert list(res.ppl) == ["baseline", "mlp", "attn", "both", "bos_only"]
    assert all(v.ppl != res.ppl["baseline"].ppl for k, v in res.ppl.items() if k != "baseline")
    assert res.to_dataframe()["ratio_to_baseline"].iloc[0] == 1.0


def test_layer_ablation_tasks_run_under_each_condition(model):
    """Exp 6 with the knowledge tasks: each ablation's hooks are active on the task prompts.

    Independent reference: the margins of a plain ``run_tasks`` call with the same hooks as a
    hand-made condition; the baseline equals a hook-free ``run_tasks``.
    """
    from drope_lens.tasks import run_tasks
    from drope_lens.tasks.conditions import Condition
    from tests.tasks.test_tasks_runner import tiny_tasks

    tasks = tiny_tasks(4)[:2]
    res = layer_ablation(
        model, list(TINY_TEXTS), layer=1, conditions=("attn",), tasks={"tasks": tasks, "batch_size": 4}
    )
    names = {s["condition"] for s in res.tasks["scores"]}
    assert names == {"baseline", "layer1_attn"}
    ref = run_tasks(
        model,
        tasks=tasks,
        batch_size=4,
        conditions=["baseline", Condition("manual", lambda m: layer_ablation_hooks(m, 1, "attn"), batch_safe=True)],
    )
    got = {(it["task"], it["condition"], it["index"]): it["margin"] for it in res.tasks["items"]}
    for it in ref.items:
        cond = "layer1_attn" if it.condition == "manual" else "baseline"
        assert got[(it.task, cond, it.index)] == pytest.approx(it.margin, abs=1e-5)
    # the ablation really changes what the model scores
    diffs = [abs(got[(t, "layer1_attn", i)] - got[(t, "baseline", i)]) for (t, c, i) in got if c == "baseline"]
    assert max(diffs) > 1e-4


def test_bos_only_cached_generation_equals_uncached(model, tokenizer):
    """KV-cache decode steps are never ablated: cached greedy output equals the cache-free one."""
    toks = encode(tokenizer, ["the cat saw a dog"]).tokens
    with model.hooks(fwd_hooks=layer_ablation_hooks(model, 0, "bos_only")):
        cached = model.generate(toks, max_new_tokens=5, do_sample=False, use_past_kv_cache=True, verbose=False)
        free = model.generate(toks, max_new_tokens=5, do_sample=False, use_past_kv_cache=False, verbose=False)
    assert torch.equal(cached, free)


# ------------------------------------------------------------------ Exp 8-9: layer norms
def test_layer_norms_vs_cache(model, tokenizer):
    texts = list(TINY_TEXTS)
    res = layer_norms(model, texts, batch_size=5)
    batch = encode(tokenizer, texts)
    for t, n in enumerate(batch.lengths.tolist()):
        _, cache = model.run_with_cache(batch.tokens[t : t + 1, :n])
        for layer in range(model.cfg.n_layers):
            a = cache[f"blocks.{layer}.hook_attn_out"][0].norm(dim=-1).mean()
            q = cache[f"blocks.{layer}.attn.hook_q"][0].reshape(n, -1).norm(dim=-1).mean()
            assert res.norms["attn"][t, layer] == pytest.approx(float(a), rel=1e-5)
            assert res.norms["q"][t, layer] == pytest.approx(float(q), rel=1e-5)
    a, m = res.norms["attn"], res.norms["mlp"]
    np.testing.assert_allclose(res.attn_fraction, a.mean(0) / (a.mean(0) + m.mean(0)))
    np.testing.assert_allclose(res.attn_fraction_per_text, (a / (a + m)).mean(0))
    assert len(res.to_dataframe()) == model.cfg.n_layers


@pytest.mark.slow
def test_embedded_attention_fraction_matches_hf(embedded_rope, embedded_hf):
    res = layer_norms(embedded_rope, list(EMBEDDED_TEXTS))
    batch = encode(embedded_rope.tokenizer, list(EMBEDDED_TEXTS))
    L = embedded_rope.cfg.n_layers
    attn_ref, mlp_ref = np.zeros((len(batch), L)), np.zeros((len(batch), L))
    for t, n in enumerate(batch.lengths.tolist()):
        handles = []
        for li, layer in enumerate(embedded_hf.model.layers):

            def ga(mod, args, out, li=li, t=t):
                attn_ref[t, li] = float((out[0] if isinstance(out, tuple) else out)[0].double().norm(dim=-1).mean())

            def gm(mod, args, out, li=li, t=t):
                mlp_ref[t, li] = float(out[0].double().norm(dim=-1).mean())

            handles += [layer.self_attn.register_forward_hook(ga), layer.mlp.register_forward_hook(gm)]
        try:
            with torch.no_grad():
                embedded_hf(batch.tokens[t : t + 1, :n])
        finally:
            for h in handles:
                h.remove()
    ref = attn_ref.mean(0) / (attn_ref.mean(0) + mlp_ref.mean(0))
    np.testing.assert_allclose(res.attn_fraction, ref, atol=1e-5)
    np.testing.assert_allclose(res.attn_fraction_per_text, (attn_ref / (attn_ref + mlp_ref)).mean(0), atol=1e-5)


# ------------------------------------------------------------------ report step and run_extended
def test_run_extended_and_report_step(tokenizer, tmp_path):
    from drope_lens.loading import ModelPair, to_nope
    from drope_lens.report.runner import DEFAULT_STEPS, ReportOptions, run_report
    from drope_lens.report.schema import validate_results

    assert "extended" not in DEFAULT_STEPS  # opt-in
    rope = hooked_from_hf(tiny_llama(seed=12), tokenizer)
    with torch.no_grad():  # a massive BOS entry in every layer's residual
        rope.W_E[tokenizer.bos_token_id, 9] = 4000.0
    pair = ModelPair(rope, to_nope(rope))
    results = run_report(pair, tmp_path, ReportOptions(quick=True, max_length=48, steps=("extended",)), progress=False)
    validate_results(results)
    e = results["experiments"]["extended"]
    for role in ("rope", "drope"):
        s = e[role]["summary"]
        assert s["residual"]["peak_channel"] == 9 and s["residual"]["peak_top1_at_bos"] == 1.0
        assert set(e[role]["residual_intervention"]["ppl"]) == {"baseline", "zero", "mean"}
        assert {"bos_write", "layer_ablation", "head_classes", "layer_norms"} <= set(s)
    # BOS sees only itself: its residual is the same with and without RoPE
    assert e["rope"]["residual"]["value"][0][0][0] == pytest.approx(e["drope"]["residual"]["value"][0][0][0])
    report = (tmp_path / "report.md").read_text()
    assert "Residual massive activations" in report
    figs = results["files"]["figures"]
    for name in (
        "residual_massive.png",
        "bos_write.png",
        "head_classes.png",
        "attention_fraction.png",
        "extended_ppl.png",
    ):
        assert f"figures/{name}" in figs
        assert (tmp_path / "figures" / name).stat().st_size > 0


def test_run_extended_rejects_unknown(model):
    from drope_lens.analysis.extended import run_extended

    with pytest.raises(ValueError, match="Unknown experiments"):
        run_extended(model, ["the cat"], experiments=("residual", "nope"))
