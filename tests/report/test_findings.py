"""The verdict rules of drope_lens.report.findings, each on constructed results: for every claim a case it
confirms, one it contradicts and one it cannot test, plus the twin rule and the rule texts in docs/findings.md."""

import copy
import math
from pathlib import Path

import pytest

from drope_lens.report import findings as F
from drope_lens.report.findings import CONFIRMED, CONTRADICTED, NOT_TESTABLE
from drope_lens.tasks.results import wilson_interval

N_TEXTS = 6
RECALIBRATED = "RoPE removed, recalibrated on 179,200 tokens; lr 1e-4"


# ------------------------------------------------------------------------------------------ builders
def _massive(rope_totals, drope_totals, v=(3.0, 3.0), layer1=(4.0, 4.0)):
    """Per-text Q/K/V totals and Q counts per layer (layer 1 set apart)."""

    def tensors(totals, v_total, l1):
        ones = l1 if isinstance(l1, list) else [l1 + 0.1 * i for i in range(len(totals))]
        per_text_q = [[1.0, x, 1.0, 1.0, 1.0] for x in ones]  # layer 1 = l1, the other layers 1
        return {
            "q": {"totals_per_text": list(totals), "counts_per_text": per_text_q},
            "k": {"totals_per_text": list(totals)},
            "v": {
                "totals_per_text": list(v_total)
                if isinstance(v_total, list)
                else [v_total + 0.5 * (i % 2) for i in range(len(totals))]
            },
        }

    return {
        "rope": {"tensors": tensors(rope_totals, v[0], layer1[0])},
        "drope": {"tensors": tensors(drope_totals, v[1], layer1[1])},
    }


def _ppl(per_text_ppl, targets=100):
    nll = [math.log(p) * targets for p in per_text_ppl]
    return {
        "ppl": math.exp(sum(nll) / (targets * len(nll))),
        "per_text_nll": nll,
        "per_text_targets": [targets] * len(nll),
    }


def _phase(rope_factors=None, drope_factors=None, sink=(0.5, 0.5)):
    """Each model's baseline and conditions; ``*_factors``: {condition: per-text PPL factor list}."""
    base = [10.0 + i for i in range(N_TEXTS)]

    def model(factors, sink_rate):
        conds = {"baseline": {"ppl": _ppl(base)}}
        for c, f in (factors or {}).items():
            conds[c] = {"ppl": _ppl([b * x for b, x in zip(base, f, strict=True)])}
        layers = [sink_rate + 0.01 * ((i % 3) - 1) for i in range(12)]
        return {"bos_layer": 1, "conditions": conds, "baseline": {"layers": {"sink_rate": layers}}}

    return {"rope": model(rope_factors, sink[0]), "drope": model(drope_factors, sink[1])}


def _scores(task, category, items_by_cond, chance):
    out = []
    for cond, correct in items_by_cond.items():
        k, n = sum(correct), len(correct)
        lo, hi = wilson_interval(k, n)
        out.append(
            {"task": task, "category": category, "condition": cond, "n": n, "correct": k, "accuracy": k / n}
            | {"ci_low": lo, "ci_high": hi, "above_chance": lo > chance}
        )
    return out


def _model_tasks(spec):
    """``spec``: {task: (category, chance, {condition: [correct per item]})}."""
    scores, items, summary = [], [], {}
    for task, (category, chance, conds) in spec.items():
        scores += _scores(task, category, conds, chance)
        for cond, correct in conds.items():
            items += [{"task": task, "condition": cond, "index": i, "correct": c} for i, c in enumerate(correct)]
    for cond in ("baseline", "qk"):
        summary[cond] = {"contextual_degradation": 10.0, "parametric_degradation": 5.0}
    return {"conditions": ["baseline", "qk"], "scores": scores, "items": items, "summary": summary}


def _items(n_right, n):
    return [True] * n_right + [False] * (n - n_right)


def _tasks(rope_spec, drope_spec=None):
    return {"rope": _model_tasks(rope_spec), "drope": _model_tasks(drope_spec or rope_spec)}


def _disruption(rope_mr, drope_mr, p):
    return {
        "rope": {"m_minus_r": rope_mr, "massive_ppl": 100.0, "base_ppl": 10.0},
        "drope": {"m_minus_r": drope_mr, "massive_ppl": 20.0, "base_ppl": 10.0},
        "ratio_m_minus_r": rope_mr / drope_mr,
        "independent_p": p,
    }


def results(twin="recalibrated", **experiments):
    origin = {"recalibrated": RECALIBRATED, "zero-shot": "zero-shot NoPE (RoPE removed, not recalibrated)"}.get(twin)
    return {
        "provenance": {
            "models": {
                "rope": {"label": "R (RoPE)", "position_encoding": "rope", "nope_origin": None},
                "drope": {
                    "label": "R (NoPE)",
                    "position_encoding": "rope" if twin == "rope" else "nope",
                    "nope_origin": origin,
                },
            }
        },
        "pair": {"rope": "R (RoPE)", "drope": "R (NoPE)", "study_pair": False},
        "experiments": {"massive": None, "phase": None, "disruption": None, "tasks": None, **experiments},
        "study": None,
    }


def verdict(claim_id, res):
    claim = next(c for c in F.CLAIMS if c.id == claim_id)
    return F.evaluate_claim(claim, res)


# ------------------------------------------------------------------------------------------ cases
ROPE_TOTALS = [100.0, 102.0, 98.0, 101.0, 99.0, 100.0]
FEWER = [60.0, 63.0, 58.0, 62.0, 61.0, 60.0]  # −39 %
MORE = [110.0, 113.0, 107.0, 112.0, 109.0, 111.0]
SAME = list(ROPE_TOTALS)
NOISY = [60.0, 150.0, 40.0, 140.0, 70.0, 130.0]  # mean ≈ RoPE's, huge spread

PARAM_OK = ("parametric", 0.5, {"baseline": _items(28, 30), "qk": _items(27, 30)})  # −4 %
CTX_DROP = ("contextual", 0.5, {"baseline": _items(29, 30), "qk": _items(12, 30)})  # −59 %
CTX_SAME = ("contextual", 0.5, {"baseline": _items(29, 30), "qk": _items(28, 30)})
CTX_CHANCE = ("contextual", 0.5, {"baseline": _items(16, 30), "qk": _items(15, 30)})
PARAM_DROP = ("parametric", 0.5, {"baseline": _items(29, 30), "qk": _items(10, 30)})
FEW_CTX = ("contextual", 0.5, {"baseline": _items(6, 6), "qk": _items(1, 6)})


def _pk(base, cond, n):
    return ("contextual", 0.0, {"baseline": _items(base, n), "qk": _items(cond, n)})


CASES = [
    # claim, results, verdict, words the reason must contain
    ("massive_q", results(massive=_massive(ROPE_TOTALS, FEWER)), CONFIRMED, "excludes no effect"),
    ("massive_q", results(massive=_massive(ROPE_TOTALS, MORE)), CONTRADICTED, "other side"),
    ("massive_q", results(massive=_massive(ROPE_TOTALS, SAME)), CONTRADICTED, "negligible"),
    ("massive_q", results(massive=_massive(ROPE_TOTALS, NOISY)), NOT_TESTABLE, "includes no effect"),
    ("massive_q", results(massive=_massive(ROPE_TOTALS[:1], FEWER[:1])), NOT_TESTABLE, "too few texts"),
    ("massive_k", results(massive=_massive(ROPE_TOTALS, FEWER)), CONFIRMED, "excludes no effect"),
    ("massive_k", results(massive=_massive(ROPE_TOTALS, MORE)), CONTRADICTED, "other side"),
    ("massive_k", results(massive=_massive(ROPE_TOTALS, NOISY)), NOT_TESTABLE, "includes no effect"),
    ("massive_v", results(massive=_massive(ROPE_TOTALS, FEWER, v=(100.0, 101.0))), CONFIRMED, "inside the band"),
    ("massive_v", results(massive=_massive(ROPE_TOTALS, FEWER, v=(100.0, 160.0))), CONTRADICTED, "outside the band"),
    (
        "massive_v",
        results(massive=_massive(ROPE_TOTALS, FEWER, v=([3.0] * 6, [1.0, 6.0, 2.0, 5.0, 1.0, 6.0]))),
        NOT_TESTABLE,
        "too wide",
    ),
    (
        "massive_v",
        results(massive=_massive(ROPE_TOTALS, FEWER, v=([0.0] * 6, [3.0] * 6))),
        NOT_TESTABLE,
        "no massive V",
    ),
    ("layer1", results(massive=_massive(ROPE_TOTALS, FEWER, layer1=(2.0, 90.0))), CONFIRMED, "excludes no effect"),
    ("layer1", results(massive=_massive(ROPE_TOTALS, FEWER, layer1=(4.0, 4.0))), CONTRADICTED, "negligible"),
    ("layer1", results(massive=_massive(ROPE_TOTALS, FEWER, layer1=(9.0, 2.0))), CONTRADICTED, "other side"),
    (
        "layer1",
        results(massive=_massive(ROPE_TOTALS, FEWER, layer1=([4.0] * 6, [1.0, 9.0, 2.0, 8.0, 1.0, 9.0]))),
        NOT_TESTABLE,
        "includes no effect",
    ),
    ("reliance", results(disruption=_disruption(5000.0, 500.0, 1e-6)), CONFIRMED, "larger"),
    ("reliance", results(disruption=_disruption(500.0, 5000.0, 1e-6)), CONTRADICTED, "smaller"),
    ("reliance", results(disruption=_disruption(510.0, 500.0, 0.4)), NOT_TESTABLE, "not distinguishable"),
    ("jin_rope", results(tasks=_tasks({"cities": PARAM_OK, "passkey": CTX_DROP})), CONFIRMED, "excludes"),
    ("jin_rope", results(tasks=_tasks({"cities": PARAM_DROP, "passkey": CTX_SAME})), CONTRADICTED, "other side"),
    ("jin_rope", results(tasks=_tasks({"cities": PARAM_OK, "passkey": CTX_CHANCE})), NOT_TESTABLE, "at chance"),
    ("jin_rope", results(tasks=_tasks({"cities": PARAM_OK, "passkey": FEW_CTX})), NOT_TESTABLE, "too few items"),
    (
        "ctx_drope",
        results(tasks=_tasks({"cities": PARAM_OK, "passkey": CTX_DROP}, {"cities": PARAM_OK, "passkey": CTX_SAME})),
        CONFIRMED,
        "excludes",
    ),
    (
        "ctx_drope",
        results(tasks=_tasks({"cities": PARAM_OK, "passkey": CTX_SAME}, {"cities": PARAM_OK, "passkey": CTX_DROP})),
        CONTRADICTED,
        "other side",
    ),
    (
        "ctx_drope",
        results(tasks=_tasks({"cities": PARAM_OK, "passkey": CTX_DROP}, {"cities": PARAM_OK, "passkey": CTX_CHANCE})),
        NOT_TESTABLE,
        "at chance",
    ),
    ("passkey_rope", results(tasks=_tasks({"passkey": _pk(12, 0, 12)})), CONFIRMED, "McNemar p"),
    ("passkey_rope", results(tasks=_tasks({"passkey": _pk(12, 12, 12)})), CONTRADICTED, "no collapse"),
    ("passkey_rope", results(tasks=_tasks({"passkey": _pk(2, 0, 2)})), NOT_TESTABLE, "too few items"),
    ("passkey_rope", results(tasks=_tasks({"passkey": _pk(0, 0, 12)})), NOT_TESTABLE, "at chance"),
    ("passkey_drope", results(tasks=_tasks({"passkey": _pk(40, 40, 40)})), CONFIRMED, "inside the band"),
    ("passkey_drope", results(tasks=_tasks({"passkey": _pk(12, 0, 12)})), CONTRADICTED, "outside the band"),
    ("passkey_drope", results(tasks=_tasks({"passkey": _pk(20, 13, 24)})), CONTRADICTED, "McNemar"),
    ("passkey_drope", results(tasks=_tasks({"passkey": _pk(3, 3, 4)})), NOT_TESTABLE, "too wide"),
    ("passkey_drope", results(tasks=_tasks({"passkey": _pk(0, 0, 12)})), NOT_TESTABLE, "at chance"),
    ("bos_rope", results(phase=_phase({"bos_mlp": [800, 900, 1000, 700, 850, 950]})), CONFIRMED, "above ×10"),
    ("bos_rope", results(phase=_phase({"bos_mlp": [3, 4, 3.5, 4.2, 3.8, 3.1]})), CONTRADICTED, "below ×10"),
    ("bos_rope", results(phase=_phase({"bos_mlp": [1, 100, 2, 200, 5, 60]})), NOT_TESTABLE, "includes ×10"),
    ("bos_rope", results(phase=_phase({})), NOT_TESTABLE, "metric not run"),
    ("bos_drope", results(phase=_phase(None, {"bos_mlp": [1.0, 1.02, 0.99, 1.01, 1.0, 1.03]})), CONFIRMED, "inside"),
    ("bos_drope", results(phase=_phase(None, {"bos_mlp": [9, 10, 11, 9.5, 10.5, 10]})), CONTRADICTED, "outside"),
    ("bos_drope", results(phase=_phase(None, {"bos_mlp": [0.5, 2.0, 1.0, 3.0, 0.7, 1.5]})), NOT_TESTABLE, "too wide"),
    (
        "qk_ppl",
        results(phase=_phase({"qk": [6, 7, 6.5, 7.2, 6.8, 6.1]}, {"qk": [1.3, 1.2, 1.25, 1.3, 1.28, 1.31]})),
        CONFIRMED,
        "above ×1",
    ),
    (
        "qk_ppl",
        results(phase=_phase({"qk": [1.3, 1.2, 1.25, 1.3, 1.28, 1.31]}, {"qk": [6, 7, 6.5, 7.2, 6.8, 6.1]})),
        CONTRADICTED,
        "below ×1",
    ),
    (
        "qk_ppl",
        results(phase=_phase({"qk": [2.0, 2.01, 2.0, 1.99, 2.0, 2.02]}, {"qk": [2.0, 2.0, 2.01, 2.0, 1.99, 2.0]})),
        CONTRADICTED,
        "negligible",
    ),
    (
        "qk_ppl",
        results(phase=_phase({"qk": [1, 5, 1.2, 6, 1.1, 4]}, {"qk": [4, 1, 5, 1.2, 3, 1.1]})),
        NOT_TESTABLE,
        "includes ×1",
    ),
    ("sinks", results(phase=_phase(sink=(0.95, 0.94))), CONFIRMED, "inside the band"),
    ("sinks", results(phase=_phase(sink=(0.95, 0.30))), CONTRADICTED, "outside the band"),
]


@pytest.mark.parametrize("claim_id,res,expected,why", CASES, ids=[f"{c[0]}-{c[2]}-{i}" for i, c in enumerate(CASES)])
def test_verdict_rules_on_constructed_results(claim_id, res, expected, why):
    f = verdict(claim_id, res)
    assert f.verdict == expected, (f.why, f.here)
    assert why in f.why, (f.why, f.here)
    assert f.here and f.rule and f.study and f.provenance


def test_sinks_not_testable_when_layers_disagree():
    res = results(phase=_phase(sink=(0.5, 0.5)))
    d = res["experiments"]["phase"]["drope"]["baseline"]["layers"]
    d["sink_rate"] = [0.5 + (0.4 if i % 2 else -0.4) for i in range(12)]  # mean the same, layers far apart
    f = verdict("sinks", res)
    assert f.verdict == NOT_TESTABLE and "too wide" in f.why


@pytest.mark.parametrize("claim", F.CLAIMS, ids=lambda c: c.id)
def test_every_claim_says_not_testable_when_its_step_did_not_run(claim):
    f = F.evaluate_claim(claim, results())
    assert f.verdict == NOT_TESTABLE and "metric not run" in f.why and f.here == "–"


def test_every_claim_has_a_confirmed_a_contradicted_and_a_not_testable_case():
    seen = {(c[0], c[2]) for c in CASES}
    for claim in F.CLAIMS:
        for v in (CONFIRMED, CONTRADICTED, NOT_TESTABLE):
            assert (claim.id, v) in seen or (claim.id == "sinks" and v == NOT_TESTABLE), (claim.id, v)


# ------------------------------------------------------------------------------------------ the twin
DROPE_CLAIMS = [c.id for c in F.CLAIMS if c.about == "drope"]
ROPE_CLAIMS = [c.id for c in F.CLAIMS if c.about == "rope"]


@pytest.mark.parametrize("twin,why", [("zero-shot", "twin not recalibrated"), ("rope", "uses RoPE")])
def test_claims_about_drope_need_a_recalibrated_twin(twin, why):
    res = results(twin, massive=_massive(ROPE_TOTALS, FEWER))
    f = verdict("massive_q", res)
    assert f.verdict == NOT_TESTABLE and why in f.why
    assert "−39" in f.claim and "%" in f.here  # the numbers are shown all the same
    assert verdict("massive_q", results(massive=_massive(ROPE_TOTALS, FEWER))).verdict == CONFIRMED


def test_claims_about_rope_alone_are_read_on_a_zero_shot_twin():
    res = results("zero-shot", phase=_phase({"bos_mlp": [800, 900, 1000, 700, 850, 950]}))
    assert verdict("bos_rope", res).verdict == CONFIRMED
    assert set(ROPE_CLAIMS) == {"jin_rope", "passkey_rope", "bos_rope"}


def test_every_reason_is_listed_when_several_apply():
    res = results("zero-shot", tasks=_tasks({"passkey": _pk(12, 12, 12)}, {"passkey": _pk(0, 0, 12)}))
    f = verdict("passkey_drope", res)
    assert f.verdict == NOT_TESTABLE
    assert "twin not recalibrated" in f.why and "passkey baseline at chance (0/12)" in f.why


def test_twin_status_reads_the_provenance():
    assert F.twin_status(results()).kind == "recalibrated"
    assert F.twin_status(results()).tokens == 179_200
    assert F.twin_status(results("zero-shot")).kind == "zero-shot"
    assert F.twin_status(results("rope")).kind == "rope"
    dr = results()
    dr["provenance"]["models"]["drope"]["nope_origin"] = "DroPE checkpoint (RoPE removed, recalibrated)"
    assert F.twin_status(dr).recalibrated and F.twin_status(dr).tokens is None


def test_notices_and_text():
    zs = results("zero-shot", phase=_phase({"bos_mlp": [3, 4, 3.5, 4.2, 3.8, 3.1]}))
    title, text = F.twin_notice(F.twin_status(zs))
    assert "zero-shot" in title and "drope-lens recalibrate" in text and "--drope recalibrated" in text
    assert "179,200 tokens" in F.twin_notice(F.twin_status(results()))[0]
    found = F.evaluate_findings(zs)
    assert [f.id for f in found] == list(F.CLAIM_IDS)
    text = F.findings_text(found, zs)
    assert "✗ contradicted" in text and "BOS-MLP ablation collapses RoPE" in text
    assert "drope-lens report --drope recalibrated" in text
    md = F.findings_markdown(found, zs)
    assert md.count("\n| ") == 1 + len(F.CLAIMS)  # header + one row per claim
    assert "> **The DroPE side is a zero-shot twin:**" in md


# ------------------------------------------------------------------------------------------ statistics
def test_statistics():
    m, lo, hi = F.t_interval([1.0, 2.0, 3.0])
    assert m == 2.0 and lo == pytest.approx(2 - 4.302653 / math.sqrt(3), rel=1e-5)
    assert F.t_interval([5.0]) is None and F.t_interval([2.0, 2.0]) == (2.0, 2.0, 2.0)
    b, c, p = F.mcnemar_exact([True] * 12, [False] * 12)
    assert (b, c) == (12, 0) and p == pytest.approx(2 * 0.5**12)
    assert F.mcnemar_exact([True, False], [True, False])[2] == 1.0
    d, lo, hi = F.newcombe_difference(12, 12, 12, 12)
    assert d == 0 and -0.25 < lo < -0.2 and 0.2 < hi < 0.25
    one = F.bootstrap_degradation(
        {"a": ([True] * 20, [True] * 10 + [False] * 10), "b": ([True] * 20, [True] * 20)},
        groups={"a": "a", "b": "b"},
        n_resamples=500,
    )
    again = F.bootstrap_degradation(
        {"a": ([True] * 20, [True] * 10 + [False] * 10), "b": ([True] * 20, [True] * 20)},
        groups={"a": "a", "b": "b"},
        n_resamples=500,
    )
    assert one == again and one[0] == pytest.approx(50.0) and one[1] < 50 < one[2]


# ------------------------------------------------------------------------------------------ the docs
def test_docs_state_every_rule():
    doc = (Path(__file__).resolve().parents[2] / "docs" / "findings.md").read_text(encoding="utf-8")
    for claim in F.CLAIMS:
        assert f"`{claim.id}`" in doc, claim.id
        assert " ".join(claim.rule.split()) in " ".join(doc.split()), f"docs/findings.md lacks the rule of {claim.id}"


def test_results_are_not_modified():
    res = results(massive=_massive(ROPE_TOTALS, FEWER))
    before = copy.deepcopy(res)
    F.evaluate_findings(res)
    assert res == before
