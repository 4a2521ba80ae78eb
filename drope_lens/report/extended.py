"""The report's optional ``extended`` step: residual massive activations and the study's Exp 5–9.

Opt-in (``--steps massive,phase,disruption,tasks,extended``). Sizes: measurements on the 5
identification texts (one per genre), perplexities on the disruption step's 5 held-out texts, texts
cut at 256 tokens (``--quick``: 3 texts each, 128 tokens) — about a minute for the pair on 2 cores.
"""

from __future__ import annotations

from typing import Any

#: The study's Exp 5–9 numbers (STUDY_SPEC.md §8: HEAD FINDINGS, results in the phase JSON; FP4
#: 4-bit, pre-RoPE manual attention with a ±100 clamp for the RoPE side, B1), RoPE / DroPE.
STUDY_EXP5_9 = [
    ("Exp 5 mean BOS V-norm", 0.361, 0.614),
    ("Exp 5 mean attention to BOS", 0.717, 0.690),
    ("Exp 5 mean BOS write", 0.220, 0.343),
    ("Exp 5 max-write layer", 31, 1),
    ("Exp 5 PPL ratio, BOS-V zeroed at spike layer", 0.927, 1.021),
    ("Exp 5 PPL ratio, BOS-V zeroed at all layers", 4.120, 3.394),
    ("Exp 6 PPL ratio, layer-1 MLP zeroed", 1815, 202),
    ("Exp 6 PPL ratio, layer-1 attention zeroed", 2.51, 201),
    ("Exp 7 sink-head share", 0.935, 0.931),
    ("Exp 7 mean attention to BOS", 0.651, 0.675),
    ("Exp 7 mean local mass", 0.297, 0.264),
    ("Exp 8/9 layer-0 attention fraction", 0.469, 0.033),
    ("Exp 8/9 layer-1 attention fraction", 0.009, 0.686),
    ("Exp 9 layers 2+ mean attention fraction", 0.346, 0.360),
]
STUDY_PROVENANCE = (
    "committed (phase JSON; HEAD FINDINGS), FP4 4-bit, one-sentence texts, "
    "pre-RoPE clamped attention for RoPE (B1), WikiText-2 PPL"
)


def extended_texts(options) -> tuple[list[str], list[str], int]:
    from drope_lens.report.texts import text_sets

    sets = text_sets(options)
    n = 3 if options.quick else 5
    return sets["identify"][:n], sets["disruption"][:n], min(options.max_length, 128 if options.quick else 256)


def run_extended(pair, options, context, *, progress: bool = True) -> dict:
    """Both models: residual massive activations (+ set to zero / mean), Exp 5–9."""
    from drope_lens.analysis.extended import run_extended as run
    from drope_lens.jsonio import plain
    from drope_lens.report.texts import each_model

    texts, ppl_texts, max_length = extended_texts(options)
    out: dict[str, Any] = {"n_texts": len(texts), "n_ppl_texts": len(ppl_texts), "max_length": max_length}
    results = {}
    for role, model in each_model(pair):
        results[role] = run(model, texts, ppl_texts, batch_size=options.batch_size, max_length=max_length)
        out[role] = results[role].to_dict()
        out[role]["summary"] = results[role].summary()
    if results["rope"].residual is not None and results["drope"].residual is not None:
        from drope_lens.analysis.residual import compare_residual_massive

        out["residual_comparison"] = compare_residual_massive(
            results["rope"].residual, results["drope"].residual
        ).to_dict()
    return plain(out)


def write_extended_figures(lab: dict, exp: dict, save) -> None:
    """Figures of the extended step into the report (``save(fig, name)``)."""
    from drope_lens.views import extended_figures as X
    from drope_lens.views.figures import plot_layer_metric

    e = exp.get("extended")
    if not e:
        return
    roles = [r for r in lab if e.get(r)]
    res = {r: e[r]["residual"] for r in roles if e[r].get("residual")}
    if res:
        save(
            X.plot_residual_massive(
                {lab[r]: res[r]["layer_stats"]["top1_mean"] for r in res},
                {lab[r]: res[r]["layer_stats"]["median_mean"] for r in res},
            ),
            "residual_massive.png",
        )

    def layer_figure(part: str, key: str, name: str, **labels: Any) -> None:
        per = {lab[r]: e[r][part][key] for r in roles if e[r].get(part)}
        if per:
            save(plot_layer_metric(per, **labels), name)

    layer_figure(
        "bos_write",
        "layer_write",
        "bos_write.png",
        ylabel="attention to BOS × ‖v_BOS‖",
        title="BOS write by layer (head mean)",
    )
    hc = {r: e[r]["head_classes"] for r in roles if e[r].get("head_classes")}
    if hc:
        import numpy as np

        counts = {lab[r]: np.stack([(np.asarray(hc[r]["classes"]) == i).sum(-1) for i in range(4)], -1) for r in hc}
        save(X.plot_head_classes(counts), "head_classes.png")
    layer_figure(
        "layer_norms",
        "attn_fraction",
        "attention_fraction.png",
        ylabel="attn / (attn + MLP) norm",
        title="Attention fraction by layer",
    )
    ppl = {}
    for r in roles:
        d: dict[str, float] = {}
        if e[r].get("residual_intervention"):
            for k, v in e[r]["residual_intervention"]["ppl"].items():
                d[{"baseline": "baseline"}.get(k, f"resid {k}")] = v["ppl"]
        if e[r].get("bos_write") and e[r]["bos_write"]["ppl"]:
            for k in ("spike", "all"):
                d[f"BOS-V {k}"] = e[r]["bos_write"]["ppl"][k]["ppl"]
        if e[r].get("layer_ablation"):
            la = e[r]["layer_ablation"]
            for k, v in la["ppl"].items():
                if k != "baseline":
                    d[f"L{la['layer']} {k}"] = v["ppl"]
        if d:
            ppl[lab[r]] = d
    if len(ppl) == len(roles) and ppl and len({tuple(v) for v in ppl.values()}) == 1:
        save(X.plot_ppl_conditions(ppl, title="Perplexity under the extended interventions"), "extended_ppl.png")


def _f(x: Any) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.4g}"
    return str(x)


def render_extended(results: dict, exp: dict) -> str:
    """Markdown section of the extended step (empty when it did not run)."""
    e = exp.get("extended")
    if not e:
        return ""
    roles = [r for r in ("rope", "drope") if e.get(r)]
    lines = [
        "## Residual massive activations (Sun et al. 2024) and the study's Exp 5–9",
        "",
        f"Measured on {e['n_texts']} built-in texts, perplexities on {e['n_ppl_texts']} held-out texts, "
        f"cut at {e['max_length']} tokens; real post-RoPE attention (fp32), BOS hooks at absolute "
        "position 0 only, no clamps.",
        "",
        "| model | peak layer | top-1 \\|h\\| | layer median | ratio | channel | at BOS | "
        "first layer > 1000× | PPL base | set to zero | set to mean |",
        "|" + "---|" * 11,
    ]
    for r in roles:
        s = e[r]["summary"].get("residual")
        if not s:
            continue
        iv = e[r].get("residual_intervention")
        ppl = iv["ppl"] if iv else {}
        res = e[r]["residual"]
        import numpy as np

        ratio = np.asarray(res["value"])[:, :, 0] / np.asarray(res["median"])
        over = [li for li in range(ratio.shape[1]) if (ratio[:, li] > 1000).mean() >= 0.5]
        lines.append(
            f"| {r} | {s['peak_layer']} | {_f(s['peak_top1_mean'])} | {_f(s['peak_median_mean'])} | "
            f"{_f(s['peak_ratio_mean'])}× | {s['peak_channel']} | {s['peak_top1_at_bos']:.0%} | "
            f"{over[0] if over else '—'} | {_f(ppl.get('baseline', {}).get('ppl'))} | "
            f"{_f(ppl.get('zero', {}).get('ppl'))} | {_f(ppl.get('mean', {}).get('ppl'))} |"
        )
    cmp_ = e.get("residual_comparison")
    if cmp_:
        lines += [
            "",
            f"Layers with a top-1 entry > 100× the median: shared {len(cmp_['shared_layers'])}, "
            f"Jaccard {cmp_['layer_jaccard']:.2f}; same top-1 channel in "
            f"{len(cmp_['same_channel_layers'])} of them.",
        ]
    rows = []
    for r in roles:
        sm = e[r]["summary"]
        b, la, hc, ln = (sm.get(k, {}) for k in ("bos_write", "layer_ablation", "head_classes", "layer_norms"))
        f = ln.get("attn_fraction") or [None, None]
        rows.append(
            [
                r,
                b.get("mean_write"),
                b.get("max_write_layer"),
                b.get("ppl_ratio_spike"),
                b.get("ppl_ratio_all"),
                la.get("ratio_mlp"),
                la.get("ratio_attn"),
                la.get("ratio_bos_only"),
                hc.get("sink_share"),
                hc.get("local_share"),
                f[0],
                f[1] if len(f) > 1 else None,
                ln.get("attn_fraction_rest_mean"),
            ]
        )
    head = [
        "model",
        "BOS write (mean)",
        "max-write layer",
        "PPL× BOS-V spike",
        "PPL× BOS-V all",
        "PPL× L1 MLP",
        "PPL× L1 attn",
        "PPL× L1 BOS-only",
        "sink heads",
        "local heads",
        "attn frac L0",
        "attn frac L1",
        "attn frac L2+",
    ]
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(_f(x) for x in row) + " |" for row in rows]
    if not results.get("study"):
        lines += [
            "",
            "The study's Exp 5–9 numbers (Llama-2-7B vs its DroPE) are shown only for that pair; "
            "they are in `drope_lens/report/extended.py` (`STUDY_EXP5_9`).",
        ]
    if results.get("study"):
        lines += [
            "",
            f"The study's numbers (RoPE / DroPE; {STUDY_PROVENANCE}):",
            "",
            "| quantity | RoPE | DroPE |",
            "|---|---|---|",
        ]
        lines += [f"| {q} | {_f(a)} | {_f(b)} |" for q, a, b in STUDY_EXP5_9]
    return "\n".join(lines)
