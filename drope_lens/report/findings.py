"""The study's headline claims, each read on the pair a report ran: confirmed, contradicted or not testable here.

One :class:`Claim` per headline statement of *Massive Activations in DroPE* (the seeds' FINDINGS,
README and PHASE_FINDINGS; numbers and provenance flags from ``study_numbers.json`` / STUDY_SPEC §11).
:func:`evaluate_findings` turns a report's ``results.json`` dict into one :class:`Finding` per claim.

The verdicts (the same three words everywhere: report.md, report.html, the terminal, results.json):

* **confirmed** — the statistic excludes no-effect on the side the claim states (a 95 % interval that
  lies wholly on that side, or an exact test with p < 0.05); for a "no change" claim, the 95 % interval
  lies wholly inside the claim's stated band.
* **contradicted** — the statistic excludes the claim: the interval lies wholly on the other side, or
  wholly inside the "negligible" band of a claimed effect (no effect, measured precisely), or wholly
  past the threshold a "collapse" / "unaffected" claim names.
* **not testable here** — with the reason: the step that measures it did not run; the claim is about
  DroPE and the DroPE side is not a recalibrated twin; the baseline it needs is at chance; too few
  texts or items for the test (the interval straddles the decision point).

A claim about DroPE (``about="drope"``) is read only when the DroPE side is recalibrated (a DroPE
checkpoint or a drope_lens recalibration): a zero-shot twin has RoPE's weights, so the study's
statements about what recalibration does cannot be tested on it. Its numbers are shown all the same.
Claims about the RoPE model alone (``about="rope"``) are read on any pair.

Each claim states its own rule (:attr:`Claim.rule`); docs/findings.md lists them all. The rules
only read numbers the report already saved; nothing here runs a model.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

CONFIRMED = "confirmed"
CONTRADICTED = "contradicted"
NOT_TESTABLE = "not testable here"
VERDICTS = (CONFIRMED, CONTRADICTED, NOT_TESTABLE)

#: Minimum items per task for the bootstrap of a degradation (fewer: "too few items").
MIN_TASK_ITEMS = 10
#: Bootstrap resamples and seed of the degradation intervals.
N_BOOTSTRAP = 2000
BOOTSTRAP_SEED = 0
LEVEL = 0.95

__all__ = [
    "CONFIRMED",
    "CONTRADICTED",
    "NOT_TESTABLE",
    "VERDICTS",
    "CLAIMS",
    "Claim",
    "Finding",
    "Twin",
    "evaluate_findings",
    "twin_status",
    "findings_markdown",
    "findings_text",
    "directional",
    "equivalence",
    "threshold",
    "ratio_directional",
]


# ============================================================================================ rules
# Each rule takes an estimate (point, low, high) — a 95 % interval — and returns (verdict, why); the
# claim's measure adds the numbers. ``None`` as verdict means "not testable" (the why says why).
Interval = tuple[float, float, float]
Rule = tuple[Optional[str], str]


def _num(x: float) -> str:
    """A number for a sentence: thousands separated, 3 significant digits below 100."""
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


def _fmt(x: Optional[float], unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if unit == "%":
        return f"{x:+.1f} %"
    if unit == "pts":  # a difference of two accuracies (fractions), in percentage points
        return f"{x * 100:+.0f} pts"
    if unit == "pp":  # a difference of two percentages, in percentage points
        return f"{x:+.1f} pts"
    if unit == "x":
        return f"×{_num(x)}"
    return _num(x)


def _pct(x: Optional[float]) -> str:
    """A degradation in % (None: not meaningful, the baseline is at chance)."""
    return "not meaningful" if x is None else f"{_num(x)} %"


def _ci(est: Interval, unit: str = "") -> str:
    return f"{_fmt(est[0], unit)} [{_fmt(est[1], unit)}, {_fmt(est[2], unit)}]"


def directional(est: Interval, sign: int, negligible: float, unit: str = "") -> Rule:
    """A claimed effect of sign ``sign`` (+1: up, −1: down).

    confirmed: the interval lies wholly on the claimed side of 0. contradicted: it lies wholly on the
    other side, or wholly inside ``(−negligible, +negligible)`` (no effect, measured precisely).
    Otherwise not testable (the interval includes no effect: too few texts/items to tell).
    """
    _, lo, hi = est
    s_lo, s_hi = sorted((sign * lo, sign * hi))
    if s_lo > 0:
        return CONFIRMED, "the 95 % CI excludes no effect"
    if s_hi < 0:
        return CONTRADICTED, "the 95 % CI lies on the other side of no effect"
    if -negligible < lo and hi < negligible:
        return CONTRADICTED, f"the 95 % CI lies inside the negligible band ±{_fmt(negligible, unit)}"
    return None, "the 95 % CI includes no effect: too few texts or items to tell"


def ratio_directional(est: Interval, negligible: float) -> Rule:
    """A claimed ratio above 1 (``est`` a ratio and its interval).

    confirmed: the interval lies wholly above ×1. contradicted: wholly below ×1, or wholly inside
    ``(1/negligible, negligible)``. Otherwise not testable.
    """
    _, lo, hi = est
    if lo > 1:
        return CONFIRMED, "the 95 % CI lies above ×1"
    if hi < 1:
        return CONTRADICTED, "the 95 % CI lies below ×1"
    if 1 / negligible < lo and hi < negligible:
        return CONTRADICTED, (
            f"the 95 % CI lies inside the negligible band {_fmt(1 / negligible, 'x')}–{_fmt(negligible, 'x')}"
        )
    return None, "the 95 % CI includes ×1: too few texts to tell"


def equivalence(est: Interval, band: tuple[float, float], unit: str = "") -> Rule:
    """A claimed absence of effect: the estimate should lie inside ``band`` = (low, high).

    confirmed: the interval lies wholly inside the band. contradicted: wholly outside it (above its
    high end or below its low end). Otherwise not testable (interval too wide for the band).
    """
    _, lo, hi = est
    b_lo, b_hi = band
    shown = f"[{_fmt(b_lo, unit)}, {_fmt(b_hi, unit)}]"
    if b_lo < lo and hi < b_hi:
        return CONFIRMED, f"the 95 % CI lies inside the band {shown}"
    if lo > b_hi or hi < b_lo:
        return CONTRADICTED, f"the 95 % CI lies outside the band {shown}"
    return None, f"the 95 % CI is too wide for the band {shown}: too few texts or items to tell"


def threshold(est: Interval, at: float, unit: str = "") -> Rule:
    """A claimed effect at least ``at`` (e.g. a perplexity "collapse": ×10 or more).

    confirmed: the interval lies wholly above ``at`` (so also above no effect). contradicted: wholly
    below it. Otherwise not testable.
    """
    _, lo, hi = est
    if lo > at:
        return CONFIRMED, f"the 95 % CI lies above {_fmt(at, unit)}"
    if hi < at:
        return CONTRADICTED, f"the 95 % CI lies below {_fmt(at, unit)}"
    return None, f"the 95 % CI includes {_fmt(at, unit)}: too few texts or items to tell"


# ======================================================================================= statistics
def t_interval(values: Sequence[float], level: float = LEVEL) -> Optional[Interval]:
    """Mean of ``values`` and its Student-t interval (None below 2 values; a constant gives a point)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 2:
        return None
    m = float(x.mean())
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return m, m, m
    from scipy.stats import t

    half = float(t.ppf(0.5 + level / 2, len(x) - 1)) * sd / math.sqrt(len(x))
    return m, m - half, m + half


def mcnemar_exact(before: Sequence[bool], after: Sequence[bool]) -> tuple[int, int, float]:
    """``(b, c, p)``: items right before and wrong after (b), wrong before and right after (c), and the
    exact two-sided McNemar p (binomial test of b out of b + c at ½; 1.0 when b + c = 0)."""
    b = sum(1 for x, y in zip(before, after, strict=True) if x and not y)
    c = sum(1 for x, y in zip(before, after, strict=True) if y and not x)
    if b + c == 0:
        return b, c, 1.0
    from scipy.stats import binomtest

    return b, c, float(binomtest(b, b + c, 0.5).pvalue)


def _wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson 95 % interval of k/n (as ``drope_lens.tasks.results.wilson_interval``, without importing the
    tasks package, which imports the model code)."""
    from scipy.stats import binomtest

    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=LEVEL, method="wilson")
    return float(ci.low), float(ci.high)


def newcombe_difference(k1: int, n1: int, k2: int, n2: int) -> Interval:
    """``k1/n1 − k2/n2`` and Newcombe's hybrid-score 95 % interval (from the two Wilson intervals; for
    paired items it is conservative: it ignores their positive correlation)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = _wilson(k1, n1)
    l2, u2 = _wilson(k2, n2)
    d = p1 - p2
    return d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)


def _per_text_log_ratio(cond: dict, base: dict) -> tuple[float, list[float]]:
    """Pooled log perplexity ratio (condition / baseline) and the per-text log ratios (same texts)."""
    nb, tb = base["per_text_nll"], base["per_text_targets"]
    nc, tc = cond["per_text_nll"], cond["per_text_targets"]
    per_text = [c / n_c - b / n_b for b, n_b, c, n_c in zip(nb, tb, nc, tc, strict=True)]
    pooled = sum(nc) / sum(tc) - sum(nb) / sum(tb)
    return pooled, per_text


def log_ratio_interval(pooled: float, per_text: Sequence[float]) -> Optional[Interval]:
    """The pooled log ratio with the t half-width of the per-text log ratios (None below 2 texts)."""
    est = t_interval(per_text)
    if est is None:
        return None
    half = (est[2] - est[1]) / 2
    return pooled, pooled - half, pooled + half


def _exp(est: Interval) -> Interval:
    return math.exp(est[0]), math.exp(est[1]), math.exp(est[2])


def bootstrap_degradation(
    tasks: Mapping[str, tuple[Sequence[bool], Sequence[bool]]],
    other: Optional[Mapping[str, tuple[Sequence[bool], Sequence[bool]]]] = None,
    *,
    groups: Optional[dict[str, str]] = None,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> Optional[Interval]:
    """A difference of mean degradations (%), with a seeded percentile bootstrap 95 % interval.

    ``tasks``: ``{task: (baseline correct per item, condition correct per item)}``. Degradation of a
    task = (acc_base − acc_cond) / acc_base × 100, averaged over a group's tasks. With ``groups``
    (``{task: "a" | "b"}``): mean over group "a" minus mean over group "b" (one model). With ``other``
    (the same tasks for a second model, same items): this model's mean minus the other's. Items are
    resampled within each task, the same indices for baseline and condition (and for both models).
    Resamples where a baseline accuracy is 0 are dropped. None when fewer than 100 resamples remain.
    """
    rng = np.random.default_rng(seed)
    arrays = {k: (np.asarray(b, dtype=float), np.asarray(c, dtype=float)) for k, (b, c) in tasks.items()}
    others = {k: (np.asarray(b, dtype=float), np.asarray(c, dtype=float)) for k, (b, c) in (other or {}).items()}

    def stat(idx: Optional[dict[str, np.ndarray]]) -> float:
        def deg(pair: tuple[np.ndarray, np.ndarray], ix: Optional[np.ndarray]) -> float:
            b, c = pair if ix is None else (pair[0][ix], pair[1][ix])
            base = b.mean()
            return math.nan if base == 0 else (base - c.mean()) / base * 100.0

        mine = {k: deg(v, None if idx is None else idx[k]) for k, v in arrays.items()}
        if other is not None:
            theirs = [deg(v, None if idx is None else idx[k]) for k, v in others.items()]
            return float(np.mean(list(mine.values())) - np.mean(theirs))
        assert groups is not None
        a = [v for k, v in mine.items() if groups[k] == "a"]
        b_ = [v for k, v in mine.items() if groups[k] == "b"]
        return float(np.mean(a) - np.mean(b_))

    point = stat(None)
    if not math.isfinite(point):
        return None
    draws = []
    for _ in range(n_resamples):
        idx = {k: rng.integers(0, len(v[0]), len(v[0])) for k, v in arrays.items()}
        v = stat(idx)
        if math.isfinite(v):
            draws.append(v)
    if len(draws) < 100:
        return None
    lo, hi = np.percentile(draws, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return point, float(lo), float(hi)


# ======================================================================================= the twin
@dataclass(frozen=True)
class Twin:
    """What the DroPE side of the pair is: ``kind`` "recalibrated", "zero-shot" or "rope" (not NoPE)."""

    kind: str
    label: str
    tokens: Optional[int] = None  # recalibration tokens, when the label says

    @property
    def recalibrated(self) -> bool:
        return self.kind == "recalibrated"


def twin_status(results: dict) -> Twin:
    """Read the DroPE side's provenance (``position_encoding``, ``nope_origin``)."""
    m = results["provenance"]["models"]["drope"]
    label = str(m.get("label") or results.get("pair", {}).get("drope", ""))
    if m.get("position_encoding") != "nope":
        return Twin("rope", label)
    origin = str(m.get("nope_origin") or "")
    if "not recalibrated" in origin or origin.startswith("zero-shot"):
        return Twin("zero-shot", label)
    got = re.search(r"recalibrated on ([\d,]+) tokens", origin)
    return Twin("recalibrated", label, int(got.group(1).replace(",", "")) if got else None)


# ======================================================================================= claims
@dataclass
class Measured:
    """What a claim's measure found: this pair's numbers, the rule's verdict and why, and any reason
    the data cannot test the claim (``blockers``: baseline at chance, too few items …)."""

    here: str
    verdict: Optional[str] = None
    why: str = ""
    blockers: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Claim:
    """One headline claim of the study, with the rule that reads it on a report's results."""

    id: str
    claim: str  # one line, the study's statement (direction), its size in parentheses
    about: str  # "rope" (the RoPE model alone) or "drope" (needs a recalibrated DroPE side)
    steps: tuple[str, ...]  # report steps whose results it reads
    study: str  # the study's numbers
    study_keys: tuple[str, ...]  # study_numbers.json entries (their provenance flags)
    rule: str  # the verdict rule, in words
    measure: Callable[[dict], Measured] = field(repr=False, compare=False)


@dataclass(frozen=True)
class Finding:
    """A claim's verdict on one pair."""

    id: str
    claim: str
    verdict: str
    why: str
    here: str
    study: str
    provenance: str
    rule: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------ massive-value counts
def _paired_pct(rope: Sequence[float], drope: Sequence[float]) -> Optional[Interval]:
    """DroPE vs RoPE change in % of RoPE's mean, paired over the same texts (t interval)."""
    base = float(np.mean(rope))
    est = t_interval([d - r for r, d in zip(rope, drope, strict=True)])
    if est is None or base == 0:
        return None
    return est[0] / base * 100, est[1] / base * 100, est[2] / base * 100


def _massive_total(tensor: str, kind: str, size: float) -> Callable[[dict], Measured]:
    def measure(exp: dict) -> Measured:
        m = exp["massive"]
        r, d = m["rope"]["tensors"][tensor]["totals_per_text"], m["drope"]["tensors"][tensor]["totals_per_text"]
        here = f"{tensor.upper()} {np.mean(r):.1f} → {np.mean(d):.1f} per text"
        est = _paired_pct(r, d)
        if est is None:
            why = "fewer than 2 texts" if len(r) < 2 else f"RoPE has no massive {tensor.upper()} values here"
            return Measured(here, blockers=[f"too few texts ({why})"])
        here += f", {_ci(est, '%')} ({len(r)} texts)"
        if kind == "fewer":
            verdict, why = directional(est, -1, size, "%")
        else:
            verdict, why = equivalence(est, (-size, size), "%")
        return Measured(here, verdict, why)

    return measure


def _layer1(exp: dict) -> Measured:
    m = exp["massive"]
    r = np.asarray(m["rope"]["tensors"]["q"]["counts_per_text"], dtype=float)
    d = np.asarray(m["drope"]["tensors"]["q"]["counts_per_text"], dtype=float)
    if r.shape[1] < 2:
        return Measured("model has one layer", blockers=["the model has no layer 1"])
    here = f"layer 1: Q {r[:, 1].mean():.1f} → {d[:, 1].mean():.1f} per text"
    est = t_interval(d[:, 1] - r[:, 1])
    if est is None:
        return Measured(here, blockers=["too few texts (fewer than 2)"])
    here += f", difference {est[0]:+.1f} [{est[1]:+.1f}, {est[2]:+.1f}] channels ({len(r)} texts)"
    verdict, why = directional(est, +1, 0.5)
    return Measured(here, verdict, why)


# ------------------------------------------------------------------------ disruption
def _reliance(exp: dict) -> Measured:
    d = exp["disruption"]
    a, b = d["rope"], d["drope"]
    ratio, p = d.get("ratio_m_minus_r"), d.get("independent_p")
    shown_p = "–" if p is None else f"{p:.2g}"
    here = (
        f"M−R {_num(a['m_minus_r'])} vs {_num(b['m_minus_r'])} points ({_fmt(ratio, 'x')}, independent t-test "
        f"p = {shown_p}); massive-zeroed PPL {_fmt(a['massive_ppl'] / a['base_ppl'], 'x')} vs "
        f"{_fmt(b['massive_ppl'] / b['base_ppl'], 'x')}"
    )
    if p is None or not math.isfinite(p):
        return Measured(here, blockers=["no test result (the random controls did not vary)"])
    if p < 0.05:
        if a["m_minus_r"] > b["m_minus_r"]:
            return Measured(here, CONFIRMED, f"RoPE's M−R is larger, p = {p:.2g} < 0.05")
        return Measured(here, CONTRADICTED, f"RoPE's M−R is smaller, p = {p:.2g} < 0.05")
    return Measured(here, None, f"M−R not distinguishable between the models (p = {p:.2g}): too few seeds to tell")


# ------------------------------------------------------------------------ knowledge tasks
def _task_items(res: dict, task: str, condition: str) -> list[bool]:
    rows = sorted(
        (it["index"], bool(it["correct"])) for it in res["items"] if it["task"] == task and it["condition"] == condition
    )
    return [c for _, c in rows]


def _score(res: dict, task: str, condition: str) -> Optional[dict]:
    return next((s for s in res["scores"] if s["task"] == task and s["condition"] == condition), None)


def _usable_tasks(res: dict, category: str, who: str) -> tuple[list[str], list[str]]:
    """The tasks of ``category`` read for ``res`` (baseline above chance, >= MIN_TASK_ITEMS items), and
    why the others are not (blockers, only when none is usable)."""
    base = [s for s in res["scores"] if s["condition"] == "baseline" and s["category"] == category]
    if not base:
        return [], [f"no {category} task ran"]
    above = [s for s in base if s.get("above_chance")]
    usable = [s["task"] for s in above if s["n"] >= MIN_TASK_ITEMS]
    if usable:
        return usable, []
    if not above:
        at = ", ".join(f"{s['task']} {s['correct']}/{s['n']}" for s in base)
        return [], [f"{who}'s {category} baseline at chance ({at})"]
    few = ", ".join(f"{s['task']} n={s['n']}" for s in above)
    return [], [f"too few items for {who}'s {category} tasks ({few}; need {MIN_TASK_ITEMS})"]


def _has_condition(res: dict, condition: str) -> bool:
    return condition in res.get("conditions", [])


def _jin_rope(exp: dict) -> Measured:
    res = exp["tasks"]["rope"]
    if not _has_condition(res, "qk"):
        return Measured("the qk condition did not run", blockers=["metric not run (condition qk)"])
    param, why_p = _usable_tasks(res, "parametric", "RoPE")
    ctx, why_c = _usable_tasks(res, "contextual", "RoPE")
    summ = res["summary"].get("qk", {})
    here = (
        f"contextual {_pct(summ.get('contextual_degradation'))} vs parametric "
        f"{_pct(summ.get('parametric_degradation'))} degradation"
    )
    if why_p or why_c:
        return Measured(here, blockers=why_p + why_c)
    data = {t: (_task_items(res, t, "baseline"), _task_items(res, t, "qk")) for t in param + ctx}
    est = bootstrap_degradation(data, groups={**{t: "a" for t in ctx}, **{t: "b" for t in param}})
    here += f" (contextual: {', '.join(ctx)}; parametric: {', '.join(param)})"
    if est is None:
        return Measured(here, blockers=["too few items (the bootstrap has no baseline above 0)"])
    here += f"; contextual − parametric {_ci(est, 'pp')}"
    verdict, why = directional(est, +1, 5.0, "pp")
    return Measured(here, verdict, why)


def _ctx_drope(exp: dict) -> Measured:
    t = exp["tasks"]
    r, d = t["rope"], t["drope"]
    if not _has_condition(r, "qk"):
        return Measured("the qk condition did not run", blockers=["metric not run (condition qk)"])
    here = (
        f"contextual degradation {_pct(r['summary'].get('qk', {}).get('contextual_degradation'))} (RoPE) vs "
        f"{_pct(d['summary'].get('qk', {}).get('contextual_degradation'))} (DroPE side)"
    )
    ctx_r, why_r = _usable_tasks(r, "contextual", "RoPE")
    ctx_d, why_d = _usable_tasks(d, "contextual", "the DroPE side")
    both = [x for x in ctx_r if x in ctx_d]
    if why_r or why_d or not both:
        return Measured(here, blockers=why_r + why_d or ["no contextual task above chance for both models"])
    est = bootstrap_degradation(
        {x: (_task_items(r, x, "baseline"), _task_items(r, x, "qk")) for x in both},
        {x: (_task_items(d, x, "baseline"), _task_items(d, x, "qk")) for x in both},
    )
    if est is None:
        return Measured(here, blockers=["too few items (the bootstrap has no baseline above 0)"])
    here += f"; RoPE − DroPE side {_ci(est, 'pp')} ({', '.join(both)})"
    verdict, why = directional(est, +1, 5.0, "pp")
    return Measured(here, verdict, why)


def _passkey_counts(res: dict, condition: str) -> Optional[tuple[int, int]]:
    s = _score(res, "passkey", condition)
    return None if s is None else (int(s["correct"]), int(s["n"]))


def _passkey(role: str, kind: str) -> Callable[[dict], Measured]:
    who = "RoPE" if role == "rope" else "the DroPE side"

    def measure(exp: dict) -> Measured:
        res = exp["tasks"][role]
        base, cond = _passkey_counts(res, "baseline"), _passkey_counts(res, "qk")
        if base is None or cond is None:
            return Measured("passkey under baseline and qk did not both run", blockers=["metric not run (passkey, qk)"])
        here = f"{base[0]}/{base[1]} → {cond[0]}/{cond[1]}"
        b, c, p = mcnemar_exact(_task_items(res, "passkey", "baseline"), _task_items(res, "passkey", "qk"))
        drop = newcombe_difference(base[0], base[1], cond[0], cond[1])
        here += f" (drop {_ci(drop, 'pts')}; McNemar {b} lost / {c} gained, p = {p:.2g})"
        if not (_score(res, "passkey", "baseline") or {}).get("above_chance"):
            return Measured(here, blockers=[f"{who}'s passkey baseline at chance ({base[0]}/{base[1]})"])
        if kind == "collapses":
            if p < 0.05 and b > c:
                return Measured(here, CONFIRMED, f"exact McNemar p = {p:.2g} < 0.05 for the drop")
            if drop[2] < 0.5:
                return Measured(here, CONTRADICTED, "the drop's 95 % CI lies below 50 points (no collapse)")
            return Measured(here, None, f"McNemar p = {p:.2g} with n = {base[1]}: too few items to tell")
        verdict, why = equivalence(drop, (-0.25, 0.25), "pts")
        if verdict is None and p < 0.05 and b > c:
            return Measured(here, CONTRADICTED, f"exact McNemar p = {p:.2g} < 0.05: accuracy fell")
        return Measured(here, verdict, why)

    return measure


# ------------------------------------------------------------------------ perplexity under interventions
def _ppl(role: str, condition: str, kind: str) -> Callable[[dict], Measured]:
    def measure(exp: dict) -> Measured:
        p = exp["phase"][role]
        conds = p["conditions"]
        if condition not in conds or not (conds[condition].get("ppl") and conds["baseline"].get("ppl")):
            return Measured(f"{condition} did not run", blockers=[f"metric not run (condition {condition})"])
        base, cond = conds["baseline"]["ppl"], conds[condition]["ppl"]
        pooled, per_text = _per_text_log_ratio(cond, base)
        here = f"PPL {_num(base['ppl'])} → {_num(cond['ppl'])}"
        if condition == "bos_mlp":
            here += f" (layer {p.get('bos_layer')})"
        est = log_ratio_interval(pooled, per_text)
        if est is None:
            return Measured(here, blockers=["too few texts (fewer than 2)"])
        ratio = _exp(est)
        here += f", {_ci(ratio, 'x')} ({len(per_text)} texts)"
        if kind == "collapses":
            verdict, why = threshold(ratio, 10.0, "x")
        else:
            verdict, why = equivalence(ratio, (0.8, 1.25), "x")
        return Measured(here, verdict, why)

    return measure


def _qk_ppl(exp: dict) -> Measured:
    p = exp["phase"]
    logs = {}
    for role in ("rope", "drope"):
        conds = p[role]["conditions"]
        if "qk" not in conds or not (conds["qk"].get("ppl") and conds["baseline"].get("ppl")):
            return Measured("qk did not run", blockers=["metric not run (condition qk)"])
        logs[role] = _per_text_log_ratio(conds["qk"]["ppl"], conds["baseline"]["ppl"])
    here = f"PPL {_fmt(math.exp(logs['rope'][0]), 'x')} (RoPE) vs {_fmt(math.exp(logs['drope'][0]), 'x')} (DroPE side)"
    diff = [a - b for a, b in zip(logs["rope"][1], logs["drope"][1], strict=True)]
    est = log_ratio_interval(logs["rope"][0] - logs["drope"][0], diff)
    if est is None:
        return Measured(here, blockers=["too few texts (fewer than 2)"])
    ratio = _exp(est)
    here += f"; RoPE's factor / DroPE side's {_ci(ratio, 'x')} ({len(diff)} texts)"
    verdict, why = ratio_directional(ratio, 1.05)
    return Measured(here, verdict, why)


# ------------------------------------------------------------------------ attention sinks
def _sinks(exp: dict) -> Measured:
    p = exp["phase"]
    r, d = p["rope"]["baseline"]["layers"]["sink_rate"], p["drope"]["baseline"]["layers"]["sink_rate"]
    here = f"mean sink rate {np.mean(r):.3f} (RoPE) vs {np.mean(d):.3f} (DroPE side)"
    est = t_interval([b - a for a, b in zip(r, d, strict=True)])
    if est is None:
        return Measured(here, blockers=["too few layers (fewer than 2)"])
    here += f", difference {_ci(est, 'pts')} over {len(r)} layers"
    verdict, why = equivalence(est, (-0.10, 0.10), "pts")
    return Measured(here, verdict, why)


# ------------------------------------------------------------------------ the list
_PAIRED_TEXTS = "paired over the same texts: per-text DroPE − RoPE {what}, Student-t 95 % CI"
CLAIMS: tuple[Claim, ...] = (
    Claim(
        "massive_q",
        "DroPE has fewer massive Q values than RoPE (−39 %)",
        "drope",
        ("massive",),
        "1475.5 ± 22.6 → 901.4 ± 36.0 (−39 %; n=10, fp16); 1488.0 → 915.3 (n=3, NF4)",
        ("massive.q_total", "massive.q_total_r1"),
        _PAIRED_TEXTS.format(what="Q total")
        + " as % of RoPE's mean. Confirmed: the CI lies below 0. Contradicted: above 0, or inside ±2 %.",
        _massive_total("q", "fewer", 2.0),
    ),
    Claim(
        "massive_k",
        "DroPE has fewer massive K values than RoPE (−11 %)",
        "drope",
        ("massive",),
        "1496.8 ± 69.8 → 1331.5 ± 74.1 (−11 %; n=10, fp16)",
        ("massive.k_total",),
        _PAIRED_TEXTS.format(what="K total")
        + " as % of RoPE's mean. Confirmed: the CI lies below 0. Contradicted: above 0, or inside ±2 %.",
        _massive_total("k", "fewer", 2.0),
    ),
    Claim(
        "massive_v",
        "DroPE and RoPE have about as many massive V values (+1.5 %)",
        "drope",
        ("massive",),
        "174.0 ± 10.7 → 176.6 ± 5.7 (+1.5 %; n=10, fp16)",
        ("massive.v_total",),
        _PAIRED_TEXTS.format(what="V total")
        + " as % of RoPE's mean. Confirmed: the CI lies inside ±10 %. Contradicted: wholly outside ±10 %.",
        _massive_total("v", "same", 10.0),
    ),
    Claim(
        "layer1",
        "Layer-1 anomaly: at layer 1 DroPE has far more massive Q values than RoPE (37×)",
        "drope",
        ("massive",),
        "layer 1: 2.7 → 101.3; layers 2–31: 49.1 → 26.8 (n=3, NF4)",
        ("massive.q_layer1", "massive.q_layers_2_31_mean"),
        _PAIRED_TEXTS.format(what="Q count at layer 1")
        + " (channels). Confirmed: the CI lies above 0. Contradicted: below 0, or inside ±0.5 channels.",
        _layer1,
    ),
    Claim(
        "reliance",
        "RoPE relies far more on massive values: zeroing them costs RoPE far more perplexity (M−R 82×)",
        "drope",
        ("disruption",),
        "M−R 115,929 vs 1,421 points (ratio 81.6, independent p = 3.2e-87)",
        ("disruption.m_minus_r", "disruption.ratio", "disruption.independent_p"),
        "the report's independent t-test of the two models' M−R over the random-control seeds (the study's "
        "test). Confirmed: RoPE's M−R is larger and p < 0.05. Contradicted: RoPE's is smaller and p < 0.05.",
        _reliance,
    ),
    Claim(
        "jin_rope",
        "In RoPE, Q/K disruption degrades contextual knowledge far more than parametric (94.3 % vs 24.5 %)",
        "rope",
        ("tasks",),
        "contextual 94.3 % vs parametric 24.5 % degradation (Exp 3)",
        ("tasks.param_ctx_degradation",),
        "RoPE, condition qk: mean degradation of the contextual tasks minus that of the parametric tasks "
        f"(tasks whose baseline is above chance, >= {MIN_TASK_ITEMS} items), seeded percentile bootstrap "
        "over items (95 %). Confirmed: the CI lies above 0. Contradicted: below 0, or inside ±5 points.",
        _jin_rope,
    ),
    Claim(
        "ctx_drope",
        "DroPE's contextual degradation under Q/K disruption is far lower than RoPE's (25 % vs 94.3 %)",
        "drope",
        ("tasks",),
        "contextual degradation 94.3 % (RoPE) vs 25.0 % (DroPE) (Exp 3)",
        ("tasks.param_ctx_degradation",),
        "condition qk: RoPE's minus the DroPE side's mean contextual degradation over the contextual tasks "
        f"above chance for both (>= {MIN_TASK_ITEMS} items), seeded percentile bootstrap over the same items "
        "(95 %). Confirmed: the CI lies above 0. Contradicted: below 0, or inside ±5 points.",
        _ctx_drope,
    ),
    Claim(
        "passkey_rope",
        "Passkey retrieval collapses under Q/K disruption in RoPE (100 % → 0 %)",
        "rope",
        ("tasks",),
        "100 % → 0 % (Exp 3, n=20)",
        ("tasks.passkey",),
        "RoPE's passkey items, baseline vs qk (baseline above chance). Confirmed: exact McNemar test p < 0.05 "
        "for a drop. Contradicted: Newcombe 95 % CI of the drop lies below 50 points (no collapse).",
        _passkey("rope", "collapses"),
    ),
    Claim(
        "passkey_drope",
        "…but DroPE's passkey retrieval is unaffected (60 % → 60 %)",
        "drope",
        ("tasks",),
        "60 % → 60 % (Exp 3, n=20; Exp 4 found 30 % → 0 %, D8)",
        ("tasks.passkey", "functional.qk"),
        "the DroPE side's passkey items, baseline vs qk (baseline above chance). Confirmed: Newcombe 95 % CI "
        "of the accuracy drop lies inside ±25 points. Contradicted: the CI lies outside it, or an exact "
        "McNemar test finds a drop (p < 0.05).",
        _passkey("drope", "unaffected"),
    ),
    Claim(
        "bos_rope",
        "BOS-MLP ablation collapses RoPE (perplexity ×1249)",
        "rope",
        ("phase",),
        "10.2 → 12,766 (×1249, prose); 3.816 → 3332.6 (×873, committed at 16a5164)",
        ("phase.ppl_bos_mlp",),
        "RoPE's perplexity with the BOS MLP output zeroed at the spike layer over baseline, pooled, with a "
        "95 % t interval of the per-text log ratios. Confirmed: the CI lies above ×10. Contradicted: below ×10.",
        _ppl("rope", "bos_mlp", "collapses"),
    ),
    Claim(
        "bos_drope",
        "…but leaves DroPE unaffected (perplexity ×1.00)",
        "drope",
        ("phase",),
        "18.6 → 18.5 (×1.00, prose); 4.225 → 4.290 (×1.015, committed at 16a5164)",
        ("phase.ppl_bos_mlp",),
        "the DroPE side's perplexity ratio, as for RoPE. Confirmed: the CI lies inside ×0.8–×1.25. "
        "Contradicted: wholly outside it.",
        _ppl("drope", "bos_mlp", "unaffected"),
    ),
    Claim(
        "qk_ppl",
        "Q/K mean replacement raises RoPE's perplexity far more than DroPE's (×6.7 vs ×1.29)",
        "drope",
        ("phase",),
        "3.816 → 25.60 (×6.7) vs 4.225 → 5.457 (×1.29)",
        ("phase.ppl_qk",),
        "RoPE's qk perplexity factor over the DroPE side's, paired over the same texts (95 % t interval of the "
        "per-text log ratios). Confirmed: the CI lies above ×1. Contradicted: below ×1, or inside ×0.95–×1.05.",
        _qk_ppl,
    ),
    Claim(
        "sinks",
        "DroPE keeps attention sinks: its sink rate is close to RoPE's (95.6 % vs 97.8 %)",
        "drope",
        ("phase",),
        "97.8 % vs 95.6 % (τ = 0.3; RoPE without RoPE, B1; ≈8-token prompts, B9)",
        ("phase.sink_rate_avg",),
        "per-layer sink rate (τ = 0.3), DroPE side − RoPE paired over layers, 95 % t interval of the mean. "
        "Confirmed: the CI lies inside ±10 points. Contradicted: wholly outside ±10 points.",
        _sinks,
    ),
)
CLAIM_IDS = tuple(c.id for c in CLAIMS)


# ======================================================================================= evaluation
def _study_flags(keys: Sequence[str]) -> str:
    from drope_lens.report.study import study_status

    flags: list[str] = []
    for k in keys:
        st = study_status(k)
        if st not in flags:
            flags.append(st)
    return " / ".join(flags)


def _why_twin(twin: Twin) -> str:
    if twin.kind == "zero-shot":
        return "twin not recalibrated (a zero-shot NoPE twin has RoPE's weights)"
    return "the DroPE side uses RoPE (not a DroPE/NoPE model)"


def evaluate_claim(claim: Claim, results: dict) -> Finding:
    """One claim's :class:`Finding` on ``results`` (a results.json dict)."""
    exp = results.get("experiments") or {}
    base = dict(
        id=claim.id, claim=claim.claim, study=claim.study, provenance=_study_flags(claim.study_keys), rule=claim.rule
    )
    missing = [s for s in claim.steps if not exp.get(s)]
    if missing:
        steps = ",".join(missing)
        return Finding(verdict=NOT_TESTABLE, why=f"metric not run (step {steps}; add it to --steps)", here="–", **base)
    got = claim.measure(exp)
    twin = twin_status(results)
    reasons = list(got.blockers)
    if claim.about == "drope" and not twin.recalibrated:
        reasons.insert(0, _why_twin(twin))
    if reasons:
        return Finding(verdict=NOT_TESTABLE, why="; ".join(reasons), here=got.here, **base)
    if got.verdict is None:
        return Finding(verdict=NOT_TESTABLE, why=got.why, here=got.here, **base)
    return Finding(verdict=got.verdict, why=got.why, here=got.here, **base)


def evaluate_findings(results: dict, claims: Sequence[Claim] = CLAIMS) -> list[Finding]:
    """Every claim's :class:`Finding` on a report's ``results`` (results.json's dict)."""
    return [evaluate_claim(c, results) for c in claims]


# ======================================================================================= rendering
RECALIBRATE_COMMANDS = ("drope-lens recalibrate", "drope-lens report --drope recalibrated")
MARK = {CONFIRMED: "✓", CONTRADICTED: "✗", NOT_TESTABLE: "–"}


def twin_notice(twin: Twin) -> Optional[tuple[str, str]]:
    """``(title, text)`` a page puts at its top when the DroPE side is not a recalibrated twin (or barely is)."""
    if twin.kind == "zero-shot":
        return (
            "The DroPE side is a zero-shot twin",
            "RoPE removed, not recalibrated: it has the RoPE model's weights, so the study's claims about DroPE "
            "are not testable here. For a recalibrated twin run "
            f"`{RECALIBRATE_COMMANDS[0]}` (about 20 min on 2 CPU cores for the embedded model), then "
            f"`{RECALIBRATE_COMMANDS[1]}`.",
        )
    if twin.kind == "rope":
        return (
            "The DroPE side uses RoPE",
            "it is not a DroPE/NoPE model, so the study's claims about DroPE are not testable here.",
        )
    if twin.tokens is not None and twin.tokens < 1_000_000_000:
        return (
            f"The DroPE side was recalibrated on {twin.tokens:,} tokens",
            "SakanaAI's DroPE models saw 10–126 B tokens: read its verdicts as a point on a trajectory, "
            "not as a result about DroPE.",
        )
    return None


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def verdict_counts(findings: Sequence[Finding]) -> str:
    """``"2 confirmed, 1 contradicted, 10 not testable here"``."""
    counts = {v: sum(f.verdict == v for f in findings) for v in VERDICTS}
    return f"{counts[CONFIRMED]} confirmed, {counts[CONTRADICTED]} contradicted, {counts[NOT_TESTABLE]} {NOT_TESTABLE}"


def findings_summary(findings: Sequence[Finding], results: dict) -> str:
    """Two sentences: the verdict counts and what the study's numbers are."""
    where = (
        "The study's numbers are its Llama-2-7B pair's, with their provenance flags (STUDY_SPEC §11)."
        if results.get("study")
        else "The study's numbers are for Llama-2-7B and its DroPE, not this pair: compare directions, not sizes."
    )
    return f"{verdict_counts(findings)}. {where}"


def findings_markdown(findings: Sequence[Finding], results: dict) -> str:
    """The findings block of report.md: a notice about the twin, then one table row per claim."""
    lines = ["## Findings: the study's claims on this pair", ""]
    notice = twin_notice(twin_status(results))
    if notice:
        lines += [f"> **{notice[0]}:** {notice[1]}", ""]
    lines += [
        findings_summary(findings, results) + " How each verdict is decided: `docs/findings.md`.",
        "",
        "| verdict | the study's claim | the study [provenance] | this pair | why |",
        "|---|---|---|---|---|",
    ]
    for f in findings:
        lines.append(
            f"| {MARK[f.verdict]} {f.verdict} | {_cell(f.claim)} | {_cell(f.study)} [{f.provenance}] | "
            f"{_cell(f.here)} | {_cell(f.why)} |"
        )
    return "\n".join(lines)


def findings_text(findings: Sequence[Finding], results: dict) -> str:
    """The findings for a terminal: one line per claim (claims not testable only because the twin is not
    recalibrated are listed together on one line)."""
    twin = twin_status(results)
    twin_why = _why_twin(twin) if not twin.recalibrated else None
    only_twin = [f for f in findings if f.verdict == NOT_TESTABLE and twin_why is not None and f.why == twin_why]
    out = [f"findings: {verdict_counts(findings)} (the study's claims on this pair; report.html has the numbers)"]
    for f in findings:
        if f in only_twin:
            continue
        detail = f.why if f.verdict == NOT_TESTABLE else f"{f.here} — {f.why}"
        out.append(f"  {MARK[f.verdict]} {f.verdict:<17} {f.claim}: {detail}")
    if only_twin:
        out.append(
            f"  {MARK[NOT_TESTABLE]} {NOT_TESTABLE:<17} {len(only_twin)} claims about DroPE "
            f"({', '.join(f.id for f in only_twin)}): {twin_why}"
        )
    notice = twin_notice(twin)
    if notice and not twin.recalibrated:
        out.append(f"  recalibrated twin: {RECALIBRATE_COMMANDS[0]}, then {RECALIBRATE_COMMANDS[1]}")
    return "\n".join(out)
