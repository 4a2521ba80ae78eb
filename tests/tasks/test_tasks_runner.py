"""Runner: conditions plumbing, prompt-only interventions under KV-cache decoding, results."""

from __future__ import annotations

import math

import pytest
import torch

from drope_lens.hooks.bos import bos_mlp_ablation_hooks
from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks
from drope_lens.loading import encode, hooked_from_hf
from drope_lens.tasks import (
    Condition,
    TaskDataset,
    TaskItem,
    compare_tasks,
    load_passkey,
    run_tasks,
)
from drope_lens.tasks.scoring import decode_step, greedy_generate, prefill
from tests.support import hooks_left

YES_NO = ("yes", "no")


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from drope_lens.testing import tiny_llama

    return hooked_from_hf(tiny_llama(seed=5), tokenizer)


@pytest.fixture(scope="module")
def tiny_nope(tokenizer):
    from drope_lens.testing import tiny_llama

    return hooked_from_hf(tiny_llama(seed=5), tokenizer, position_encoding="nope")


def tiny_tasks(n_words: int = 10):
    words = "cat dog bird fish tree house car road city river".split()[:n_words]
    param = [TaskItem(f"is the {w} in the sea ? answer :", "yes" if i % 2 else "no") for i, w in enumerate(words)]
    ctx = [
        TaskItem(
            f"the movie was {'great' if i % 2 else 'awful'} . review : {w} . answer :",
            "positive" if i % 2 else "negative",
        )
        for i, w in enumerate(words)
    ]
    key = [TaskItem("the secret number is 4 2 . remember . the secret number is", "42", {"length": 12})]
    return [
        TaskDataset("facts", "parametric", "choice", param, YES_NO),
        TaskDataset("mood", "contextual", "choice", ctx, ("positive", "negative")),
        TaskDataset("key", "contextual", "passkey", key),
    ]


class Recorder:
    """A test condition: records the sequence length of each pass at blocks.0.hook_resid_pre."""

    def __init__(self, fail: bool = False):
        self.lengths: list[int] = []
        self.fail = fail

    def hooks(self, model):
        def rec(x, hook):
            self.lengths.append(x.shape[1])
            if self.fail:
                raise RuntimeError("boom")

        return [("blocks.0.hook_resid_pre", rec)]


def test_condition_hooks_are_active_on_every_pass_and_removed(tiny, tokenizer):
    rec = Recorder()
    tasks = tiny_tasks(4)
    n_key = int(encode(tokenizer, tasks[2].items[0].text).lengths[0])
    res = run_tasks(tiny, tasks=tasks, conditions=["baseline", Condition("rec", rec.hooks)], batch_size=4)
    assert not hooks_left(tiny)
    # not batch-safe -> one prompt per pass for the choice tasks (4 + 4 passes),
    # then the passkey prompt and its one-token decode steps
    assert len(rec.lengths) >= 8 + 2
    assert rec.lengths[8] == n_key and set(rec.lengths[9:]) == {1}
    assert res.conditions == ["baseline", "rec"]
    assert res.accuracy("facts", "rec") == res.accuracy("facts", "baseline")  # recorder is inert


def test_hooks_are_removed_when_scoring_fails(tiny):
    with pytest.raises(RuntimeError, match="boom"):
        run_tasks(tiny, tasks=tiny_tasks()[:1], conditions=[Condition("bad", Recorder(True).hooks)])
    assert not hooks_left(tiny)


def test_results_structure_and_numbers(tiny, tiny_nope):
    r = run_tasks(
        tiny, tasks=tiny_tasks(6), conditions=["baseline", "qk", "bos_mlp", "combined"], bos_layer=0, batch_size=4
    )
    df = r.to_dataframe()
    assert len(df) == 3 * 4 and set(df.condition) == {"baseline", "qk", "bos_mlp", "combined"}
    for s in r.scores:
        items = [it for it in r.items if it.task == s.task and it.condition == s.condition]
        assert s.n == len(items) and s.correct == sum(it.correct for it in items)
        assert s.accuracy == pytest.approx(s.correct / s.n)
        assert s.ci_low <= s.accuracy <= s.ci_high
    for it in r.items:
        if it.task == "facts":
            assert it.prediction == max(it.logprobs, key=it.logprobs.get)
            other = [v for k, v in it.logprobs.items() if k != it.answer]
            assert it.margin == pytest.approx(it.logprobs[it.answer] - max(other))
            assert it.correct == (it.margin > 0)
    base, cond = r.accuracy("mood", "baseline"), r.accuracy("mood", "qk")
    sc = r.score("mood", "baseline")
    expect = None if not sc.ci_low > sc.chance else math.nan if base == 0 else (base - cond) / base * 100
    got = r.degradation("mood", "qk")
    assert (got is None and expect is None) or got == pytest.approx(expect, nan_ok=True)
    summ = r.category_summary("qk")
    assert set(summ) >= {"parametric_degradation", "contextual_degradation", "ratio"}
    d = r.to_dict()
    assert len(d["items"]) == len(r.items) and d["datasets"]["facts"]["label_counts"] == {"yes": 3, "no": 3}
    assert r.condition_info["bos_mlp"]["bos_layer"] == 0
    r2 = run_tasks(tiny_nope, tasks=tiny_tasks(6), conditions=["baseline", "qk", "bos_mlp", "combined"], bos_layer=0)
    cmp = compare_tasks(r, r2)
    assert len(cmp.to_dataframe()) == 24 and cmp.accuracy_table().shape == (3, 8)
    with pytest.raises(ValueError, match="differ"):
        compare_tasks(r, run_tasks(tiny_nope, tasks=tiny_tasks(2)[:1], conditions=["baseline"]))


def test_interventions_change_log_probs(tiny):
    r = run_tasks(tiny, tasks=tiny_tasks()[:1], conditions=["baseline", "qk", "bos_mlp"], bos_layer=0)
    lp = {c: [it.logprobs["yes"] for it in r.items if it.condition == c] for c in r.conditions}
    assert lp["qk"] != pytest.approx(lp["baseline"], abs=1e-4)
    assert lp["bos_mlp"] != pytest.approx(lp["baseline"], abs=1e-4)


def test_study_scoring_uses_one_denominator(tiny):
    r = run_tasks(tiny, tasks=tiny_tasks(4), conditions=["baseline"], scoring="study")
    for s in r.scores:
        items = [it for it in r.items if it.task == s.task]
        assert s.n == len(items)  # unparseable answers stay in the denominator, as wrong
        assert s.parse_rate == pytest.approx(sum(it.prediction is not None for it in items) / s.n)
        assert all(it.correct is False for it in items if it.prediction is None)
        assert all(it.output is not None for it in items)


def test_errors(tiny):
    with pytest.raises(ValueError, match="Unknown task"):
        run_tasks(tiny, tasks=["weather"], conditions=["baseline"])
    with pytest.raises(ValueError, match="Unknown condition"):
        run_tasks(tiny, tasks=tiny_tasks(), conditions=["zap"], bos_layer=0)
    with pytest.raises(ValueError, match="Unknown scoring"):
        run_tasks(tiny, tasks=tiny_tasks(), conditions=["baseline"], scoring="vibes")
    with pytest.raises(ValueError, match="unique"):
        run_tasks(tiny, tasks=tiny_tasks(), conditions=["baseline", "baseline"])
    with pytest.raises(ValueError, match="out of range"):
        run_tasks(tiny, tasks=tiny_tasks(), conditions=["bos_mlp"], bos_layer=7)


# ------------------------------------------------------- decode steps under an active intervention
def _greedy_steps(model, logits, cache, steps):
    """[logits, then the logits of ``steps`` greedy decode steps from ``cache``]."""
    out = [logits]
    for _ in range(steps):
        logits = decode_step(model, int(logits.argmax()), cache)
        out.append(logits)
    return torch.stack(out)


def _hooked_generation_logits(model, prompt, steps, hooks):
    """Greedy decoding with ``hooks`` active on every pass: [prefill logits, step logits...]."""
    with model.hooks(fwd_hooks=hooks):
        logits, cache = prefill(model, prompt)
        return _greedy_steps(model, logits, cache, steps)


def _prompt_only_logits(model, prompt, steps, hooks):
    """Reference: hooks on the prompt pass only, decode steps run with no hooks at all."""
    with model.hooks(fwd_hooks=hooks):
        logits, cache = prefill(model, prompt)
    return _greedy_steps(model, logits, cache, steps)


@pytest.mark.parametrize("which", ["qk", "bos", "both"])
def test_interventions_touch_the_prompt_only_during_generation(tiny, tokenizer, which):
    prompt = encode(tokenizer, "the secret number is 4 2 . remember the number . answer :").tokens[0]

    def hooks():
        h = []
        if which in ("qk", "both"):
            h += qk_mean_replacement_hooks(tiny)
        if which in ("bos", "both"):
            h += bos_mlp_ablation_hooks(0, model=tiny)
        return h

    active = _hooked_generation_logits(tiny, prompt, 5, hooks())
    reference = _prompt_only_logits(tiny, prompt, 5, hooks())
    plain = _prompt_only_logits(tiny, prompt, 5, [])
    assert torch.allclose(active, reference, atol=1e-5)
    assert not torch.allclose(active[0], plain[0], atol=1e-3)  # the prompt pass is perturbed


def test_the_study_bos_hook_would_hit_decode_steps(tiny, tokenizer):
    """Sensitivity check of the test above: the study's hook (bug B3) fails it."""
    prompt = encode(tokenizer, "the secret number is 4 2 . remember the number . answer :").tokens[0]
    study = _hooked_generation_logits(tiny, prompt, 5, bos_mlp_ablation_hooks(0, study_compatible=True))
    reference = _prompt_only_logits(tiny, prompt, 5, bos_mlp_ablation_hooks(0, study_compatible=True))
    assert torch.allclose(study[0], reference[0], atol=1e-5)
    assert not torch.allclose(study[1:], reference[1:], atol=1e-3)


def test_greedy_generate_under_conditions_equals_prompt_only_reference(tiny, tokenizer):
    prompt = encode(tokenizer, "is the cat in the house ? the cat is red . answer :").tokens[0]
    hooks = qk_mean_replacement_hooks(tiny) + bos_mlp_ablation_hooks(0, model=tiny)
    with tiny.hooks(fwd_hooks=hooks):
        ids, _ = greedy_generate(tiny, prompt, 6, stop_at_eos=False)
    ref = _prompt_only_logits(tiny, prompt, 5, qk_mean_replacement_hooks(tiny) + bos_mlp_ablation_hooks(0, model=tiny))
    assert ids == [int(row.argmax()) for row in ref]


# ------------------------------------------------------------------- the embedded pair (slow)
@pytest.mark.slow
def test_embedded_pair_all_tasks_all_conditions(embedded_rope, embedded_nope):
    from drope_lens.tasks import build_datasets

    datasets = build_datasets(
        embedded_rope.tokenizer,
        n={"cities": 2, "sports": 2, "sentiment": 2, "passkey": 1},
        passkey_lengths=(128,),
        seed=0,
    )
    assert [d.name for d in datasets] == ["cities", "sports", "sentiment", "passkey"]
    results = {}
    for role, model in (("rope", embedded_rope), ("drope", embedded_nope)):
        results[role] = run_tasks(model, tasks=datasets, bos_layer=1, batch_size=4)
        assert len(results[role].scores) == 16
    cmp = compare_tasks(results["rope"], results["drope"])
    assert cmp.accuracy_table().shape == (4, 8)
    # log-prob scoring equals a direct computation from the model's logits (hand-picked items)
    r = results["rope"]
    tok = embedded_rope.tokenizer
    yes, no = tok(" Yes", add_special_tokens=False)["input_ids"], tok(" No", add_special_tokens=False)["input_ids"]
    for i in (0, 1):
        it = datasets[0].items[i]
        ids = encode(tok, it.text).tokens
        with torch.no_grad():
            logp = torch.log_softmax(embedded_rope(ids)[0, -1].double(), -1)
        got = next(x for x in r.items if x.task == "cities" and x.condition == "baseline" and x.index == i)
        assert got.logprobs["Yes"] == pytest.approx(float(logp[yes[0]]), abs=1e-4)
        assert got.logprobs["No"] == pytest.approx(float(logp[no[0]]), abs=1e-4)


@pytest.mark.slow
def test_embedded_passkey_prompts_fit_the_model(embedded_rope):
    ds = load_passkey(embedded_rope.tokenizer, lengths=(256, 512), n=20, n_ctx=embedded_rope.cfg.n_ctx)
    assert len(ds) == 40 and ds.label_counts() == {"256": 20, "512": 20}
