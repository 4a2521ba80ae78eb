"""report.md: the study's tables for the pair analysed, each with a one-line reading."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from drope_lens.options import DEFAULT_GU_EPS, DEFAULT_TAU

ROLES = ("rope", "drope")


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        if math.isnan(x):
            return "NaN"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        if x != 0 and (abs(x) >= 1e5 or abs(x) < 1e-3):
            return f"{x:.{digits}g}"
        return f"{x:,.{digits}f}".rstrip("0").rstrip(".") if "." in f"{x:.{digits}f}" else f"{x:,}"
    if isinstance(x, (list, tuple)):
        return ", ".join(_f(v, digits) for v in x)
    return str(x)


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(c if isinstance(c, str) else _f(c) for c in row) + " |")
    return "\n".join(lines)


def _pct_change(a: float, b: float) -> Optional[float]:
    return None if not a else (b - a) / a * 100


def _backend_line(prov: dict) -> str:
    """``HookedTransformer`` / ``TransformerBridge`` (saved results from before the bridge: hooked)."""
    names = {"hooked": "HookedTransformer", "bridge": "TransformerBridge"}
    return names.get(prov["models"]["rope"].get("backend") or "hooked", "HookedTransformer")


def header_lines(results: dict) -> list[str]:
    """The pair, provenance and step timings under the title (report.md; report.html shows them too)."""
    pair = results["pair"]
    prov = results["provenance"]
    return [
        f"* **RoPE model:** {pair['rope']}",
        f"* **DroPE/NoPE model:** {pair['drope']}",
        f"* created {prov['created']}; drope_lens {prov['packages'].get('drope_lens')}, torch "
        f"{prov['packages'].get('torch')}, transformer-lens {prov['packages'].get('transformer-lens')} "
        f"({_backend_line(prov)}); dtype {prov['models']['rope']['dtype']} on {prov['models']['rope']['device']}; "
        f"attention scores in fp32; options `{_options_line(prov['options'])}`",
        "",
        "drope_lens computes the corrected quantities by default (real post-RoPE attention, no "
        "padding rows, BOS-only ablation under KV cache, one accuracy denominator). Every study "
        "quirk is an explicit option; see `docs/differences.md`.",
        "",
        "Step timings: " + ", ".join(f"{s} {v['seconds']:.1f} s ({v['status']})" for s, v in results["steps"].items()),
    ]


def render_report(results: dict, findings: Optional[Sequence[Any]] = None) -> str:
    """report.md: the findings in words, then each step's tables with its figures inline (relative
    image links) and links to its views, then the study's numbers and the file list."""
    from drope_lens.report.findings import evaluate_findings, findings_markdown

    findings = evaluate_findings(results) if findings is None else findings
    out = ["# drope_lens report", "", *header_lines(results), "", findings_markdown(findings, results)]
    for section in report_sections():
        text = section.render(results, results["experiments"])
        if text:
            out += ["", text]
            media = section_media(section, results)
            if media:
                out += ["", *media]
    return "\n".join(out) + "\n"


@dataclass(frozen=True)
class Section:
    """One part of the report: its Markdown, and the figures and views that show its numbers."""

    key: str
    render: Callable[[dict, dict], str]
    figures: tuple[tuple[str, str], ...] = ()  # (file in figures/, caption)
    views: tuple[tuple[str, str], ...] = ()  # (file in views/, caption)


def section_media(section: Section, results: dict) -> list[str]:
    """report.md's inline images (relative links) and view links for ``section`` (files that exist only)."""
    files = results.get("files") or {}
    figs, views = set(files.get("figures") or []), set(files.get("views") or [])
    lines = [f"![{cap}](figures/{name})" for name, cap in section.figures if f"figures/{name}" in figs]
    lines += [
        f"* View: [{cap}](views/{name}) (opens offline)" for name, cap in section.views if f"views/{name}" in views
    ]
    return lines


def report_sections() -> list[Section]:
    """The report's parts in order, each with its figures and views (report.md and report.html share it)."""
    from drope_lens.report.extended import render_extended

    return [
        Section(
            "massive",
            _massive,
            (
                ("qkv_totals.png", "Massive Q/K/V channels per text, both models (mean ± std over texts)"),
                ("layer_counts_q.png", "Massive Q channels by layer"),
                ("layer_counts_k.png", "Massive K channels by layer"),
            ),
            (("massive_channels.html", "channel norm maps, layers × head·dim"),),
        ),
        Section(
            "disruption",
            _disruption,
            (
                ("disruption_ppl.png", "Perplexity: baseline, massive channels zeroed, random channels zeroed"),
                ("m_minus_r.png", "M−R (massive % − random %) with its bootstrap 95 % CI"),
            ),
        ),
        Section(
            "phase",
            _phase,
            (
                ("layer_sink_rate.png", "Sink rate by layer"),
                ("layer_bos_ratio.png", "BOS norm / mean other-token norm by layer"),
                ("layer_bos_norm.png", "BOS norm by layer"),
                ("interventions_bos_ratio.png", "BOS ratio by layer under each intervention"),
                ("layer_entropy_sq.png", "Representation entropy (σ², unnormalised) by layer"),
                ("layer_entropy_norm.png", "Representation entropy (σ, normalised) by layer"),
                ("sink_heatmap.png", "Sink score per head (layers × heads)"),
            ),
            (
                ("attention.html", "attention heads of both models (circuitsvis)"),
                ("sink_scores.html", "sink-score maps"),
            ),
        ),
        Section("tasks", _tasks, (("task_accuracy.png", "Task accuracy under each condition (Wilson 95 % CI)"),)),
        Section(
            "extended",
            lambda results, exp: render_extended(results, exp),
            (
                ("residual_massive.png", "Residual-stream top-1 |h| and median by layer"),
                ("bos_write.png", "BOS write by layer"),
                ("head_classes.png", "Head classes by layer"),
                ("attention_fraction.png", "Attention fraction of the block output by layer"),
                ("extended_ppl.png", "Perplexity under the extended interventions"),
            ),
        ),
        Section("context", _context, (("context_length.png", "Passkey, perplexity and sinks against length"),)),
        Section("study", _study),
        Section("files", _files),
    ]


def _options_line(opts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in opts.items() if k != "steps")


# ---------------------------------------------------------------------------------------------
def _massive(results: dict, exp: dict) -> str:
    m = exp.get("massive")
    if not m:
        return ""
    t_names = list(m["rope"]["tensors"])
    rows = []
    for t in t_names:
        a, b = m["rope"]["tensors"][t], m["drope"]["tensors"][t]
        rows.append(
            [
                t.upper(),
                f"{a['total_mean']:.1f} ± {a['total_std']:.1f}",
                f"{b['total_mean']:.1f} ± {b['total_std']:.1f}",
                _f(_pct_change(a["total_mean"], b["total_mean"]), 1) + " %",
            ]
        )
    q_a, q_b = m["rope"]["tensors"]["q"]["total_mean"], m["drope"]["tensors"]["q"]["total_mean"]
    layer_rows = []
    n_layers = m["rope"]["n_layers"]
    for layer in range(n_layers):
        layer_rows.append([layer] + [m[r]["tensors"][t]["per_layer_mean"][layer] for t in ("q", "k") for r in ROLES])
    band_lines = []
    for t in ("q", "k"):
        bc = m["rope"]["tensors"][t].get("band_counts")
        if bc:
            band_lines.append(f"{t.upper()}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(bc.items())))
    peak = max(
        range(n_layers),
        key=lambda li: (
            m["drope"]["tensors"]["q"]["per_layer_mean"][li] - m["rope"]["tensors"]["q"]["per_layer_mean"][li]
        ),
    )
    return "\n".join(
        [
            "## 1. Massive values in Q/K/V",
            "",
            f"λ = {m['rope']['threshold']}, scope `{m['rope']['scope']}`, {m['rope']['rotary']}-RoPE "
            f"projections, {m['n_texts']} built-in texts; count = (head, dim) channels per layer with "
            "token-L2 norm > λ × layer mean, summed over layers; mean ± population std over texts.",
            "",
            _table(["tensor", "RoPE", "DroPE/NoPE", "change"], rows),
            "",
            f"*Reading:* the NoPE/DroPE model has {_f(abs(_pct_change(q_a, q_b) or 0.0), 1)} % "
            f"{'more' if q_b >= q_a else 'fewer'} massive Q channels per text than the RoPE model; the "
            f"layer where it exceeds RoPE most is layer {peak}.",
            "",
            "Per-layer mean counts:",
            "",
            _table(["layer", "Q RoPE", "Q DroPE", "K RoPE", "K DroPE"], layer_rows),
            "",
            ("RoPE model, massive channels per text by rotary band: " + "; ".join(band_lines)) if band_lines else "",
        ]
    )


def _disruption(results: dict, exp: dict) -> str:
    d = exp.get("disruption")
    if not d:
        return ""
    rows = []
    for r in ROLES:
        x = d[r]
        rows.append(
            [
                r,
                x["n_massive"],
                x["base_ppl"],
                x["massive_ppl"],
                f"{x['massive_pct']:.1f}",
                f"{x['random_mean_pct']:.2f} ± {x['random_std_pct']:.2f}",
                f"{x['m_minus_r']:.1f} [{x['ci_m_minus_r'][0]:.1f}, {x['ci_m_minus_r'][1]:.1f}]",
                f"{x['paired_p']:.3g}",
                f"{x['cohens_d_ddof0']:.3g}",
            ]
        )
    s = d["rope"]["settings"]
    return "\n".join(
        [
            "## 2. Disruption: zeroing massive Q/K channels vs random controls",
            "",
            f"Massive channels found on {s['n_identify_texts']} identification texts; perplexity on "
            f"{d['rope']['n_eval_texts']} {'identification' if s['eval_on_identify'] else 'held-out'} texts; "
            f"{len(d['rope']['seeds'])} random controls with the same count per layer and tensor, "
            f"{'excluding' if s['exclude_massive'] else 'not excluding'} massive channels. Paired t-test "
            "over seeds (massive % is constant: a one-sample test), Cohen's d = mean/std of the "
            "differences (ddof 0, as the study), bootstrap 95 % CI of M−R.",
            "",
            _table(
                [
                    "model",
                    "massive ch.",
                    "base PPL",
                    "massive PPL",
                    "massive %",
                    "random % (mean ± std)",
                    "M−R [95 % CI]",
                    "paired p",
                    "d",
                ],
                rows,
            ),
            "",
            f"*Reading:* the RoPE model's M−R is {_f(d['ratio_m_minus_r'], 3)}× the NoPE/DroPE model's "
            f"(independent t-test p = {d['independent_p']:.3g}).",
        ]
    )


def _phase(results: dict, exp: dict) -> str:
    p = exp.get("phase")
    if not p:
        return ""
    sm = {r: p[r]["baseline"]["summary"] for r in ROLES}
    summary_rows = [
        [f"mean sink rate (τ = {DEFAULT_TAU:g})", sm["rope"]["mean_sink_rate"], sm["drope"]["mean_sink_rate"]],
        [f"Gu et al. Sink^ε (ε = {DEFAULT_GU_EPS:g})", sm["rope"]["gu_sink"], sm["drope"]["gu_sink"]],
        [
            "BOS spike layer, arg-max of ratio (code; used for ablation)",
            sm["rope"]["spike_layer_argmax"],
            sm["drope"]["spike_layer_argmax"],
        ],
        [
            "BOS spike layer, first ratio > 2 (prose)",
            sm["rope"]["spike_layer_first_above"],
            sm["drope"]["spike_layer_first_above"],
        ],
        [
            "peak BOS norm (layer)",
            f"{sm['rope']['peak_bos_norm']:.1f} ({sm['rope']['peak_bos_layer']})",
            f"{sm['drope']['peak_bos_norm']:.1f} ({sm['drope']['peak_bos_layer']})",
        ],
        [
            "min entropy σ² unnormalised (layer)",
            f"{sm['rope']['min_entropy_sq']:.4f} ({sm['rope']['min_entropy_sq_layer']})",
            f"{sm['drope']['min_entropy_sq']:.4f} ({sm['drope']['min_entropy_sq_layer']})",
        ],
        [
            "min entropy σ normalised (layer)",
            f"{sm['rope']['min_entropy_norm']:.4f} ({sm['rope']['min_entropy_norm_layer']})",
            f"{sm['drope']['min_entropy_norm']:.4f} ({sm['drope']['min_entropy_norm_layer']})",
        ],
    ]
    lay = {r: p[r]["baseline"]["layers"] for r in ROLES}
    n_layers = len(lay["rope"]["sink_rate"])
    layer_rows = [
        [li] + [lay[r][k][li] for k in ("sink_rate", "bos_ratio", "entropy_sq") for r in ROLES]
        for li in range(n_layers)
    ]
    conds = list(p["rope"]["conditions"])
    ppl_rows = []
    for c in conds:
        row = [c]
        for r in ROLES:
            cur = (p[r]["conditions"][c].get("ppl") or {}).get("ppl")
            base = (p[r]["conditions"]["baseline"].get("ppl") or {}).get("ppl")
            row += [cur, (cur / base) if cur and base else None]
        ppl_rows.append(row)
    opts = p["rope"]["baseline"]["options"]
    return "\n".join(
        [
            "## 3. Phase metrics (native fp32 attention) and BOS-MLP ablation",
            "",
            f"{p['n_texts']} built-in texts, unpadded rows only; attention `{opts['attention']}` "
            f"(real post-RoPE patterns), BOS query row {'included' if opts['include_bos_row'] else 'excluded'}, "
            f"last layer `{opts['last_layer']}`. BOS-MLP ablation zeroes the MLP output at absolute "
            f"position 0 of layer {p['rope']['bos_layer']} (RoPE) / {p['drope']['bos_layer']} (DroPE/NoPE).",
            "",
            _table(["metric", "RoPE", "DroPE/NoPE"], summary_rows),
            "",
            "Perplexity under each condition (ratio to baseline):",
            "",
            _table(["condition", "RoPE PPL", "× base", "DroPE PPL", "× base"], ppl_rows),
            "",
            f"*Reading:* BOS-MLP ablation multiplies RoPE perplexity by "
            f"{_f(ppl_rows[conds.index('bos_mlp')][2] if 'bos_mlp' in conds else None, 3)} and "
            f"NoPE/DroPE perplexity by {_f(ppl_rows[conds.index('bos_mlp')][4] if 'bos_mlp' in conds else None, 3)}; "
            f"mean sink rates are {_f(sm['rope']['mean_sink_rate'])} vs {_f(sm['drope']['mean_sink_rate'])}.",
            "",
            "Per layer:",
            "",
            _table(
                ["layer", "sink RoPE", "sink DroPE", "BOS ratio RoPE", "BOS ratio DroPE", "H(σ²) RoPE", "H(σ²) DroPE"],
                layer_rows,
            ),
        ]
    )


def _context(results: dict, exp: dict) -> str:
    c = exp.get("context")
    if not c:
        return ""
    rows = []
    for r in ROLES:
        for p in c[r]["points"]:
            rows.append(
                [
                    r,
                    p["length"],
                    p["passkey_accuracy"],
                    p["ppl"],
                    p["sink_rate"],
                    p["max_bos_ratio"],
                    p["massive_q"],
                    p["massive_k"],
                ]
            )
    ctx = ", ".join(f"{r} {c[r]['training_context']}" for r in ROLES)
    return "\n".join(
        [
            "## Context length (Exp 10)",
            "",
            f"One seeded long text per length (built-in texts, then filler); passkey "
            f"{c['rope']['n_per_depth']} prompt(s) per depth {c['rope']['depths']}. Training context: {ctx}.",
            "",
            _table(
                ["model", "length", "passkey acc", "PPL", "sink rate", "max BOS ratio", "massive Q", "massive K"], rows
            ),
        ]
    )


AT_CHANCE = "baseline at chance — degradation not meaningful"


def _deg_cell(value: Any, above: bool) -> Any:
    return value if above else AT_CHANCE


def _task_reading(res: dict, above: list[str], who: str) -> str:
    """Which tasks are above chance at baseline, their degradation per intervention, and the rest."""
    if not above:
        return f"{who}: no task above chance at baseline, so no degradation is read"
    degs = []
    for task in above:
        cells = [
            f"{sc['condition']} {res['degradation'][task + '/' + sc['condition']]:.0f} %"
            for sc in res["scores"]
            if sc["task"] == task
            and sc["condition"] != "baseline"
            and res["degradation"].get(task + "/" + sc["condition"]) is not None
        ]
        degs.append(f"{task} ({', '.join(cells)})" if cells else task)
    rest = [sc["task"] for sc in res["scores"] if sc["condition"] == "baseline" and sc["task"] not in above]
    out = f"{who}: above chance at baseline — {'; '.join(degs)} degradation"
    return out + (f"; at chance (not read): {', '.join(rest)}" if rest else "")


def _tasks(results: dict, exp: dict) -> str:
    t = exp.get("tasks")
    if not t:
        return ""
    rows = []
    above = {}
    for r in ROLES:
        base_ok = {sc["task"]: bool(sc.get("above_chance")) for sc in t[r]["scores"] if sc["condition"] == "baseline"}
        above[r] = [k for k, v in base_ok.items() if v]
        for sc in t[r]["scores"]:
            deg = t[r]["degradation"].get(f"{sc['task']}/{sc['condition']}")
            auc = sc.get("auroc")
            auc_cell = (
                "–"
                if auc is None or (isinstance(auc, float) and math.isnan(auc))
                else f"{auc:.3f} [{_f(sc.get('auroc_low'))}, {_f(sc.get('auroc_high'))}]"
            )
            rows.append(
                [
                    r,
                    sc["task"],
                    sc["category"],
                    sc["condition"],
                    f"{sc['accuracy']:.3f} [{sc['ci_low']:.3f}, {sc['ci_high']:.3f}]",
                    auc_cell,
                    _f(sc.get("chance")),
                    sc["n"],
                    None if sc["condition"] == "baseline" else _deg_cell(deg, base_ok.get(sc["task"], False)),
                ]
            )
    cat_rows = []
    for r in ROLES:
        for cond, c in t[r]["summary"].items():
            if cond == "baseline":
                continue
            cat_rows.append(
                [r, cond]
                + [
                    c.get(k) if c.get(k) is not None else AT_CHANCE
                    for k in ("parametric_degradation", "contextual_degradation")
                ]
                + [c.get("ratio") if c.get("ratio") is not None else "not meaningful"]
            )
    base = {r: t[r]["summary"].get("baseline", {}) for r in ROLES}
    scoring, n_shot = t["rope"]["scoring"], t["rope"].get("n_shot", 0)
    how = {
        "calibrated": "log-probability of the answer options minus the option prior measured on "
        'content-free prompts ("N/A", "", "[MASK]") under the same condition '
        "(contextual calibration, Zhao et al. 2021)",
        "logprob": "log-probability of the answer options",
        "study": "greedy generation and the study's parsing",
    }.get(scoring, scoring)
    reading = [_task_reading(t[r], above[r], "RoPE" if r == "rope" else "NoPE/DroPE") for r in ROLES]
    fmt = t["rope"].get("task_format", "yes_no")
    form = (
        'cities and sports as two-way completions ("Q: In which country is X?\\nA:" → the true '
        "country vs a distractor; the prompt names neither)"
        if fmt == "completion"
        else "cities and sports as yes/no questions"
    )
    return "\n".join(
        [
            "## 4. Parametric vs contextual knowledge under each intervention",
            "",
            f"Scoring `{scoring}`, {n_shot}-shot, {form} ({how}; passkey by greedy "
            "generation with KV cache and exact match); accuracy with Wilson 95 % CI; AUROC of the option "
            "margin with a bootstrap 95 % CI (threshold-free); degradation = (baseline − condition) / "
            "baseline × 100, only where the baseline CI lies above chance. Interventions act on the prompt only.",
            "",
            _table(
                [
                    "model",
                    "task",
                    "category",
                    "condition",
                    "accuracy [95 % CI]",
                    "AUROC [95 % CI]",
                    "chance",
                    "n",
                    "degradation %",
                ],
                rows,
            ),
            "",
            "Category averages of degradation (%), over the tasks whose baseline is above chance:",
            "",
            _table(["model", "condition", "parametric", "contextual", "ctx/param"], cat_rows),
            "",
            f"*Reading:* {'; '.join(reading)}. Baseline parametric / contextual accuracy is "
            f"{_f(base['rope'].get('parametric_accuracy'))} / {_f(base['rope'].get('contextual_accuracy'))} "
            f"for RoPE and {_f(base['drope'].get('parametric_accuracy'))} / "
            f"{_f(base['drope'].get('contextual_accuracy'))} for NoPE/DroPE.",
        ]
    )


def _study(results: dict, exp: dict) -> str:
    study = results.get("study")
    if not study:
        return (
            "## 5. The study's published numbers\n\nThis pair is not the study's "
            "(meta-llama/Llama-2-7b-hf vs SakanaAI/Llama-2-7b-hf-DroPE), so the study's numbers "
            "are not shown beside ours; they are in `drope_lens/report/study_numbers.json`."
        )
    rows = [
        [e["label"], _f(e.get("rope", e.get("value"))), _f(e.get("drope")), e["status"], e.get("note", "")]
        for e in study["entries"]
    ]
    return "\n".join(
        [
            "## 5. The study's published numbers (for comparison)",
            "",
            _table(["quantity", "RoPE", "DroPE", "provenance", "note"], rows),
        ]
    )


def _files(results: dict, exp: dict) -> str:
    f = results["files"]
    lines = ["## Files", "", "* `report.html` — this report as one page (figures and views inside, opens offline)"]
    lines += ["* `results.json` — every number above, with provenance"]
    lines += [f"* `{p}`" for p in f.get("figures", [])]
    lines += [f"* `{p}` (opens offline)" for p in f.get("views", [])]
    lines += [f"* **NOT WRITTEN** — {m}" for m in f.get("missing", [])]
    return "\n".join(lines)
