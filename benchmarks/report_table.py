"""Pure logic of the benchmark: ratios, target verdicts, the Markdown table.

Nothing here times anything or loads a model, so it is tested directly on synthetic numbers
(``tests/bench/test_benchmarks.py``). :mod:`benchmarks.run` feeds it the raw records it measured.

A *case record* (one per case, as written to ``results.json``) looks like::

    {"case": "detection", "status": "ok", "model": "embedded", "n_texts": 4, "seq_len": 256,
     "params_mb": 513.0,
     "sections": {"drope_lens": {"time_s": 3.1, "times": [...], "peak_delta_mb": 120.0, "passes": 1},
                  "tl_forward": {...}, "tl_forward_nologits": {...}, "hf_forward": {...},
                  "study_way": {...}}}

``time_s`` is the best of the repeats, ``peak_delta_mb`` the peak resident (or CUDA allocated)
memory above what the process held right before the section, ``passes`` the number of forward
passes over the workload the section needs (so ``time / (passes x bare)`` is a per-pass overhead).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

#: Section names a case record may hold.
ANALYSIS = "drope_lens"
TL_BARE = "tl_forward"
TL_BARE_NOLOGITS = "tl_forward_nologits"
HF_BARE = "hf_forward"
STUDY = "study_way"

#: The issue's targets.
DETECTION_MAX_RATIO = 1.10  # detection time / bare TL forward on the same batches
MEMORY_MAX_RATIO = 1.5  # analysis peak / bare forward peak (both above the loaded models)
MEMORY_SLACK_MB = 64.0  # absolute allowance on top of the ratio, for small workloads
REPORT_MAX_S = 600.0  # the full report on the embedded pair, 2-core CPU
MIN_SPEEDUP = 5.0  # study's approach / drope_lens on the same work

RESULTS_START = "<!-- results:start -->"
RESULTS_END = "<!-- results:end -->"


def ratio(num: Optional[float], den: Optional[float]) -> Optional[float]:
    """``num / den``, or ``None`` when either is missing, not finite, or ``den <= 0``."""
    if num is None or den is None:
        return None
    try:
        num, den = float(num), float(den)
    except (TypeError, ValueError):
        return None
    if not (math.isfinite(num) and math.isfinite(den)) or den <= 0:
        return None
    return num / den


def _get(sections: dict, name: str, key: str) -> Optional[float]:
    sec = sections.get(name)
    if not isinstance(sec, dict) or sec.get("status", "ok") != "ok":
        return None
    value = sec.get(key)
    return None if value is None else float(value)


def case_ratios(record: dict) -> dict[str, Optional[float]]:
    """Every derived figure of one case record (``None`` where a section is missing)."""
    s = record.get("sections", {})
    t = {name: _get(s, name, "time_s") for name in (ANALYSIS, TL_BARE, TL_BARE_NOLOGITS, HF_BARE, STUDY)}
    m = {name: _get(s, name, "peak_delta_mb") for name in (ANALYSIS, TL_BARE, TL_BARE_NOLOGITS, HF_BARE, STUDY)}
    passes = _get(s, ANALYSIS, "passes") or 1.0
    # the like-for-like bare forward: without the unembedding when the analysis does not need logits
    same_work = (
        t[TL_BARE_NOLOGITS] if (record.get("analysis_needs_logits") is False and t[TL_BARE_NOLOGITS]) else t[TL_BARE]
    )
    same_mem = (
        m[TL_BARE_NOLOGITS] if (record.get("analysis_needs_logits") is False and m[TL_BARE_NOLOGITS]) else m[TL_BARE]
    )
    out = {
        "vs_tl": ratio(t[ANALYSIS], t[TL_BARE]),
        "vs_tl_same_work": ratio(t[ANALYSIS], same_work),
        "vs_hf": ratio(t[ANALYSIS], t[HF_BARE]),
        "per_pass_vs_tl": ratio(t[ANALYSIS], None if same_work is None else same_work * passes),
        "tl_vs_hf": ratio(t[TL_BARE], t[HF_BARE]),
        "speedup": ratio(t[STUDY], t[ANALYSIS]),
        "mem_vs_tl": ratio(m[ANALYSIS], same_mem),
        "study_mem_vs_ours": ratio(m[STUDY], m[ANALYSIS]),
    }
    params = record.get("params_mb")
    peak = m[ANALYSIS]
    out["mem_over_model"] = ratio(None if peak is None or params is None else peak + float(params), params)
    return out


def memory_near_forward(
    analysis_mb: Optional[float],
    bare_mb: Optional[float],
    *,
    max_ratio: float = MEMORY_MAX_RATIO,
    slack_mb: float = MEMORY_SLACK_MB,
) -> Optional[bool]:
    """True when the analysis's peak (above the models) is within ``max_ratio`` x one bare forward's
    peak plus ``slack_mb``: no cache of every layer's activations was built."""
    if analysis_mb is None or bare_mb is None:
        return None
    return float(analysis_mb) <= max_ratio * max(float(bare_mb), 0.0) + slack_mb


def _verdict(target: str, value: Optional[float], limit: str, met: Optional[bool], note: str = "") -> dict:
    return {
        "target": target,
        "value": value,
        "limit": limit,
        "met": met,
        "status": {True: "met", False: "NOT met", None: "not measured"}[met],
        "note": note,
    }


def overall_speedup(records: Iterable[dict]) -> Optional[float]:
    """Total study-way time / total drope_lens time over the cases that have both."""
    study = ours = 0.0
    n = 0
    for r in records:
        if r.get("status") != "ok" or r.get("case") == "scaling":
            continue
        s = r.get("sections", {})
        a, b = _get(s, STUDY, "time_s"), _get(s, ANALYSIS, "time_s")
        if a is None or b is None:
            continue
        study += a
        ours += b
        n += 1
    return ratio(study, ours) if n else None


def verdicts(records: list[dict]) -> list[dict]:
    """The issue's four targets, judged on the measured records."""
    by_case = {r.get("case"): r for r in records if r.get("status") == "ok"}
    out = []
    det = by_case.get("detection")
    if det is not None:
        rr = case_ratios(det)
        v = rr["vs_tl_same_work"]
        out.append(
            _verdict(
                "detection time <= 1.10x bare TL forward (same batches)",
                v,
                f"<= {DETECTION_MAX_RATIO:.2f}",
                None if v is None else v <= DETECTION_MAX_RATIO,
            )
        )
    else:
        out.append(
            _verdict(
                "detection time <= 1.10x bare TL forward (same batches)", None, f"<= {DETECTION_MAX_RATIO:.2f}", None
            )
        )
    mem_cases = [r for r in records if r.get("status") == "ok" and r.get("case") in ("detection", "phase", "sinks")]
    worst, worst_case, met = None, None, None
    for r in mem_cases:
        s = r.get("sections", {})
        bare_name = (
            TL_BARE_NOLOGITS
            if r.get("analysis_needs_logits") is False and _get(s, TL_BARE_NOLOGITS, "peak_delta_mb") is not None
            else TL_BARE
        )
        a, b = _get(s, ANALYSIS, "peak_delta_mb"), _get(s, bare_name, "peak_delta_mb")
        ok = memory_near_forward(a, b)
        if ok is None:
            continue
        rv = ratio(a, b) if b and b > 0 else None
        if worst is None or (rv is not None and rv > worst):
            worst, worst_case = rv, r.get("case")
        met = ok if met is None else (met and ok)
    out.append(
        _verdict(
            f"peak memory <= {MEMORY_MAX_RATIO:g}x one bare forward (+{MEMORY_SLACK_MB:g} MB), no full cache",
            worst,
            f"<= {MEMORY_MAX_RATIO:g}",
            met,
            f"worst case: {worst_case}" if worst_case else "",
        )
    )
    rep = by_case.get("report")
    rep_t = None if rep is None else _get(rep.get("sections", {}), ANALYSIS, "time_s")
    on_embedded = rep is not None and rep.get("model") == "embedded" and not rep.get("quick")
    out.append(
        _verdict(
            "full report on the embedded pair <= 10 min (2-core CPU)",
            rep_t,
            f"<= {REPORT_MAX_S:.0f} s",
            None if rep_t is None else (rep_t <= REPORT_MAX_S if on_embedded else None),
            "" if rep_t is None or on_embedded else "measured on a smaller/quick run only",
        )
    )
    sp = overall_speedup(records)
    out.append(
        _verdict(
            "speed-up over the study's approach >= 5x (same work, all cases)",
            sp,
            f">= {MIN_SPEEDUP:g}",
            None if sp is None else sp >= MIN_SPEEDUP,
        )
    )
    return out


# ------------------------------------------------------------------------------------------ formatting
def fmt_num(x: Optional[float], unit: str = "", digits: int = 2) -> str:
    """Compact number for the table: ``-`` when missing, fewer decimals for large values."""
    if x is None:
        return "-"
    x = float(x)
    if not math.isfinite(x):
        return "-"
    if abs(x) >= 100:
        s = f"{x:.0f}"
    elif abs(x) >= 10:
        s = f"{x:.1f}"
    else:
        s = f"{x:.{digits}f}"
    return s + unit


def _sec_time(r: dict, name: str) -> Optional[float]:
    return _get(r.get("sections", {}), name, "time_s")


def _sec_mem(r: dict, name: str) -> Optional[float]:
    return _get(r.get("sections", {}), name, "peak_delta_mb")


def case_label(r: dict) -> str:
    extra = r.get("label") or ""
    base = r.get("case", "?")
    return f"{base} ({extra})" if extra else base


def _cells(r: dict, tl: str) -> dict[str, str]:
    """One record's formatted figures, as both tables show them (``tl``: the bare TL section to show)."""
    rr = case_ratios(r)
    return {
        "ours": fmt_num(_sec_time(r, ANALYSIS)),
        "tl": fmt_num(_sec_time(r, tl)),
        "hf": fmt_num(_sec_time(r, HF_BARE)),
        "study": fmt_num(_sec_time(r, STUDY)),
        "vs_tl": fmt_num(rr["vs_tl_same_work"], "×"),
        "vs_hf": fmt_num(rr["vs_hf"], "×"),
        "speedup": fmt_num(rr["speedup"], "×"),
        "mem_ours": fmt_num(_sec_mem(r, ANALYSIS), digits=0),
        "mem_tl": fmt_num(_sec_mem(r, tl), digits=0),
        "mem_study": fmt_num(_sec_mem(r, STUDY), digits=0),
    }


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_cases_table(records: list[dict]) -> str:
    """One row per case: times, memory, and the ratios."""
    head = (
        "| case | workload | drope_lens s | bare TL s | bare HF s | study way s | ÷ bare TL | ÷ bare HF "
        "| speed-up vs study | peak MB (ours / bare TL / study) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in records:
        if r.get("case") == "scaling":
            continue
        if r.get("status") != "ok":
            lines.append(
                f"| {case_label(r)} | {r.get('workload', '-')} | {r.get('status', '?')}: "
                f"{r.get('reason', '')} | | | | | | | |"
            )
            continue
        c = _cells(r, TL_BARE_NOLOGITS if r.get("analysis_needs_logits") is False else TL_BARE)
        peaks = f"{c['mem_ours']} / {c['mem_tl']} / {c['mem_study']}"
        lines.append(
            _md_row(
                [case_label(r), str(r.get("workload", "-")), c["ours"], c["tl"], c["hf"], c["study"]]
                + [c["vs_tl"], c["vs_hf"], c["speedup"], peaks]
            )
        )
    return "\n".join(lines)


def render_scaling_table(records: list[dict]) -> str:
    """Detection scaling rows (sequence length and number of texts)."""
    rows = [r for r in records if r.get("case") == "scaling" and r.get("status") == "ok"]
    if not rows:
        return ""
    head = (
        "| texts × tokens | detection s | bare TL s | ÷ bare TL | bare HF s | study way s | speed-up "
        "| peak MB ours | peak MB bare TL | peak MB study |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in sorted(rows, key=lambda r: (r.get("n_texts", 0) * r.get("seq_len", 0), r.get("seq_len", 0))):
        c = _cells(r, TL_BARE_NOLOGITS)
        lines.append(
            _md_row(
                [f"{r.get('n_texts')} × {r.get('seq_len')}", c["ours"], c["tl"], c["vs_tl"], c["hf"], c["study"]]
                + [c["speedup"], c["mem_ours"], c["mem_tl"], c["mem_study"]]
            )
        )
    return "\n".join(lines)


def render_verdicts(records: list[dict]) -> str:
    lines = ["| target | measured | limit | verdict |", "|---|---|---|---|"]
    for v in verdicts(records):
        note = f" ({v['note']})" if v.get("note") else ""
        lines.append(f"| {v['target']} | {fmt_num(v['value'])} | {v['limit']} | **{v['status']}**{note} |")
    return "\n".join(lines)


def render_results(payload: dict) -> str:
    """The whole generated block of ``benchmarks/README.md`` (between the markers)."""
    records = payload.get("cases", [])
    machine = payload.get("machine", {})
    parts = [
        f"Measured {payload.get('date', '?')} with `{payload.get('command', '?')}`.",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in machine.items()) + ".",
        "",
    ]
    if payload.get("note"):
        parts += [payload["note"], ""]
    parts += [
        "**Targets**",
        "",
        render_verdicts(records),
        "",
        f"**Per analysis** (best of {payload.get('repeat', '?')}; seconds; peak memory above the loaded models)",
        "",
        render_cases_table(records),
        "",
    ]
    scaling = render_scaling_table(records)
    if scaling:
        parts += ["**Scaling of detection** (RoPE model; one batch)", "", scaling, ""]
    return "\n".join(parts)


def replace_between_markers(text: str, new_block: str, start: str = RESULTS_START, end: str = RESULTS_END) -> str:
    """Put ``new_block`` between the markers (appended with fresh markers when they are missing)."""
    block = f"{start}\n{new_block.rstrip()}\n{end}"
    i, j = text.find(start), text.find(end)
    if i == -1 or j == -1 or j < i:
        return text.rstrip() + "\n\n" + block + "\n"
    return text[:i] + block + text[j + len(end) :]


def as_jsonable(obj: Any) -> Any:
    """Floats rounded for the JSON file, NaN/inf as None."""
    if isinstance(obj, float):
        return round(obj, 6) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_jsonable(v) for v in obj]
    return obj
