"""Turn the saved step results into results.json, report.md, figures/ and views/."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Optional

from drope_lens.atomic import atomic_write_text
from drope_lens.jsonio import atomic_write_json
from drope_lens.options import DEFAULT_TAU
from drope_lens.report.findings import evaluate_findings
from drope_lens.report.markdown import render_report
from drope_lens.report.study import STUDY_DROPE, STUDY_ROPE, is_study_pair, study_numbers
from drope_lens.runs.provenance import provenance

__all__ = [
    "build_outputs",
    "write_figures",
    "write_views",
    "study_numbers",
    "is_study_pair",
    "STUDY_ROPE",
    "STUDY_DROPE",
]

SCHEMA_VERSION = 1


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def build_outputs(pair, out: Path, options, outcomes: dict) -> dict:
    experiments = {step: o.result for step, o in outcomes.items()}
    results: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "provenance": provenance(pair, options.to_dict()),
        "pair": {"rope": pair.labels["rope"], "drope": pair.labels["drope"], "study_pair": is_study_pair(pair)},
        "steps": {s: {"status": o.status, "seconds": round(o.seconds, 3)} for s, o in outcomes.items()},
        "experiments": experiments,
        "study": study_numbers() if is_study_pair(pair) else None,
        "files": {"report": "report.md", "figures": [], "views": []},
    }
    missing: list[str] = []
    collected: dict[str, list] = {}  # the views, for report.html
    for kind, writer, extra in (("figures", write_figures, {}), ("views", write_views, {"collected": collected})):
        written: list[str] = results["files"][kind]
        try:  # a failing figure must never lose the numbers, nor go unnoticed
            writer(pair, out / kind, experiments, written, **extra)
        except Exception as exc:
            why = f"{kind} after {len(written)} written not written: {type(exc).__name__}: {exc}"
            missing.append(why)
            print(f"[{kind}] {why}", file=sys.stderr)
    findings: list = []
    try:
        findings = evaluate_findings(results)
    except Exception as exc:  # a claim that cannot be read must not lose the numbers either
        missing.append(f"findings not evaluated: {type(exc).__name__}: {exc}")
        print(f"[findings] {missing[-1]}", file=sys.stderr)
    results["findings"] = [f.to_dict() for f in findings]
    results["files"]["html"] = "report.html"
    page = None
    try:
        from drope_lens.report.html import render_html

        page = render_html(results, out, findings, collected)
    except Exception as exc:
        missing.append(f"report.html not written: {type(exc).__name__}: {exc}")
        print(f"[report.html] {missing[-1]}", file=sys.stderr)
    results["files"]["missing"] = missing
    atomic_write_json(out / "results.json", results)
    atomic_write_text(out / "report.md", render_report(results, findings))
    if page is not None:
        atomic_write_text(out / "report.html", page)
    return results


# ----------------------------------------------------------------------------------------------
def write_figures(pair, fig_dir: Path, exp: dict, written: Optional[list] = None) -> list[str]:
    from drope_lens.views import figures as F

    lab: dict[str, str] = {role: F.short_label(pair.labels[role]) for role in ("rope", "drope")}
    written = [] if written is None else written

    def save(fig, name: str) -> None:
        F.save_figure(fig, fig_dir / name)
        written.append(f"figures/{name}")

    m = exp.get("massive")
    if m:
        save(
            F.plot_qkv_totals(
                {
                    lab[r]: {
                        t.upper(): (m[r]["tensors"][t]["total_mean"], m[r]["tensors"][t]["total_std"])
                        for t in m[r]["tensors"]
                    }
                    for r in lab
                }
            ),
            "qkv_totals.png",
        )
        for t in ("q", "k"):
            save(
                F.plot_layer_counts({lab[r]: m[r]["tensors"][t]["per_layer_mean"] for r in lab}, tensor=t.upper()),
                f"layer_counts_{t}.png",
            )
    d = exp.get("disruption")
    if d:
        save(
            F.plot_disruption_ppl(
                {
                    lab[r]: {
                        "baseline": d[r]["base_ppl"],
                        "massive": d[r]["massive_ppl"],
                        "random": (sum(d[r]["random_ppls"]) / len(d[r]["random_ppls"]), _std(d[r]["random_ppls"])),
                    }
                    for r in lab
                }
            ),
            "disruption_ppl.png",
        )
        save(F.plot_mr({lab[r]: (d[r]["m_minus_r"], *d[r]["ci_m_minus_r"]) for r in lab}), "m_minus_r.png")
    p = exp.get("phase")
    if p:
        layers = {r: p[r]["baseline"]["layers"] for r in lab}
        for key, ylabel, log in (
            ("sink_rate", f"sink rate (τ={DEFAULT_TAU:g})", False),  # the report runs PhaseOptions() defaults
            ("bos_norm", "BOS norm", False),
            ("bos_ratio", "BOS norm / mean other-token norm", True),
            ("entropy_sq", "entropy (σ², unnormalised)", False),
            ("entropy_norm", "entropy (σ, normalised)", False),
        ):
            save(
                F.plot_layer_metric(
                    {lab[r]: layers[r][key] for r in lab}, ylabel=ylabel, title=f"{ylabel} by layer", log=log
                ),
                f"layer_{key}.png",
            )
        save(F.plot_sink_heatmap({lab[r]: p[r]["baseline"]["sink_score"] for r in lab}), "sink_heatmap.png")
        conds = {
            c: {
                lab[r]: p[r]["conditions"][c]["profile"]["layers"]["bos_ratio"]
                for r in lab
                if (p[r]["conditions"].get(c) or {}).get("profile")
            }
            for c in p["rope"]["conditions"]
        }
        conds = {c: v for c, v in conds.items() if v}
        if len(conds) > 1:
            save(F.plot_interventions(conds, ylabel="BOS ratio", log=True), "interventions_bos_ratio.png")
    c = exp.get("context")
    if c:
        from drope_lens.views.context_figure import plot_context

        save(plot_context({pair.labels[r]: c[r] for r in lab}), "context_length.png")
    tasks = exp.get("tasks")
    if tasks:
        acc: dict[str, dict[str, dict[str, tuple]]] = {}
        for r in lab:
            for sc in tasks[r]["scores"]:
                acc.setdefault(lab[r], {}).setdefault(sc["task"], {})[sc["condition"]] = (
                    sc["accuracy"],
                    sc["ci_low"],
                    sc["ci_high"],
                )
        save(F.plot_task_degradation(acc), "task_accuracy.png")
    if exp.get("extended"):
        from drope_lens.report.extended import write_extended_figures

        write_extended_figures(lab, exp, save)
    return written


def _std(xs) -> float:
    mu = sum(xs) / len(xs)
    return (sum((x - mu) ** 2 for x in xs) / len(xs)) ** 0.5


def write_views(
    pair, view_dir: Path, exp: dict, written: Optional[list] = None, *, collected: Optional[dict] = None
) -> list[str]:
    """Write views/*.html (each opens offline); ``collected`` gets ``{"views/<file>": [(title, view), ...]}``
    for report.html, which renders the same views inline."""
    from drope_lens.data.texts import builtin_texts
    from drope_lens.views import (
        massive_channel_map,
        pair_attention_view,
        save_html,
        sink_score_map,
        to_offline_html,
    )

    written = [] if written is None else written
    collected = {} if collected is None else collected
    text = builtin_texts("factual")[0]
    words = text.split()
    text = " ".join(words[:40])
    p = exp.get("phase")
    layer = p["rope"].get("bos_layer") if p else None
    layer = 1 if layer is None else min(int(layer), pair.rope.cfg.n_layers - 1)
    sections = [
        (f"Layer {layer}: attention heads, both models, same tokens", pair_attention_view(pair, text, layer=layer))
    ]
    if layer != pair.rope.cfg.n_layers // 2:
        mid = pair.rope.cfg.n_layers // 2
        sections.append((f"Layer {mid}", pair_attention_view(pair, text, layer=mid)))
    save_html(
        view_dir / "attention.html",
        to_offline_html(
            sections,
            title="Attention heads: RoPE vs DroPE/NoPE",
            description="Real (native, fp32) attention patterns from hook_pattern.",
        ),
    )
    written.append("views/attention.html")
    collected["views/attention.html"] = sections
    if p:
        maps = [
            (pair.labels[r], sink_score_map(p[r]["baseline"]["sink_score"], title=f"Sink scores: {pair.labels[r]}"))
            for r in ("rope", "drope")
        ]
        save_html(view_dir / "sink_scores.html", to_offline_html(maps, title="Sink-score maps (layers × heads)"))
        written.append("views/sink_scores.html")
        collected["views/sink_scores.html"] = maps
    m = exp.get("massive")
    if m:
        maps = []
        for r in ("rope", "drope"):
            for t in ("q", "k"):
                maps.append(
                    (
                        f"{pair.labels[r]} — {t.upper()}",
                        massive_channel_map(
                            m[r]["mean_norm_map"][t],
                            d_head=pair.rope.cfg.d_head,
                            title=f"{t.upper()} channel norms (text mean)",
                            log=True,
                            value_name="M",
                        ),
                    )
                )
        save_html(
            view_dir / "massive_channels.html", to_offline_html(maps, title="Massive-channel maps (layers × head·dim)")
        )
        written.append("views/massive_channels.html")
        collected["views/massive_channels.html"] = maps
    return written
