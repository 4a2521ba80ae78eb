"""Calibrated and few-shot scoring, AUROC, honest degradation (hand-built models of known bias)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from drope_lens.loading import hooked_from_hf
from drope_lens.tasks import Condition, TaskDataset, TaskItem, run_tasks
from drope_lens.tasks.calibration import (
    _auc,
    auroc,
    build_prompt,
    content_free_prompts,
    draw_demonstrations,
    log_prior,
)
from drope_lens.tasks.results import TaskResults, TaskScore

OPTS = ("yes", "no")
TEMPLATE = "question : {q} answer :"


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from drope_lens.testing import tiny_llama

    return hooked_from_hf(tiny_llama(seed=5), tokenizer)


def _ids(tokenizer, word):
    return tokenizer(" " + word, add_special_tokens=False)["input_ids"][0]


def cue_dataset(n=20, pool=10):
    """Items whose answer is written in the content word ("cat" -> yes, "dog" -> no)."""
    words = "cat dog".split()

    def item(i):
        w = words[i % 2]
        return TaskItem(TEMPLATE.format(q=f"{w} {i}"), OPTS[i % 2], {"q": f"{w} {i}"})

    items = [item(i) for i in range(n)]
    demos = [item(i) for i in range(n, n + pool)]
    return TaskDataset(
        "cue", "parametric", "choice", items, OPTS, template=TEMPLATE, slot="q", content_key="q", demo_pool=demos
    )


def test_biased_model_raw_at_chance_calibrated_at_true_accuracy(tiny, tokenizer):
    ds = cue_dataset()
    handles = []
    yes, no, cat, dog = (_ids(tokenizer, w) for w in ("yes", "no", "cat", "dog"))

    def make(model):
        store = {}

        def logits(x, hook):
            toks = store["tokens"]
            x = x.clone()
            sign = (toks == cat).any(-1).float() - (toks == dog).any(-1).float()
            x[..., yes] += 100.0 + 2.0 * sign[:, None]  # constant bias toward 'yes' swamps the signal
            x[..., no] -= 2.0 * sign[:, None]
            return x

        handles.append(
            model.embed.register_forward_pre_hook(  # the token ids of each pass
                lambda mod, args: store.__setitem__("tokens", args[0])
            )
        )
        return [("unembed.hook_out", logits)]

    cond = Condition("biased", make, batch_safe=True)
    try:
        raw = run_tasks(tiny, tasks=[ds], conditions=[cond], scoring="logprob")
        cal = run_tasks(tiny, tasks=[ds], conditions=[cond], scoring="calibrated")
    finally:
        for h in handles:
            h.remove()
    r, c = raw.score("cue", "biased"), cal.score("cue", "biased")
    assert r.accuracy == 0.5 and not r.above_chance  # always 'yes'
    assert c.accuracy == 1.0 and c.above_chance
    # the margin ranks the items perfectly either way; a constant shift leaves AUROC unchanged
    assert r.auroc == pytest.approx(1.0) and c.auroc == pytest.approx(1.0)
    assert c.prior["yes"] > np.log(0.99) and c.prior["no"] < -50
    assert r.prior is None
    # the degradation of an at-chance baseline is not a number
    assert raw.degradation("cue", "biased", baseline="biased") is None
    assert cal.degradation("cue", "biased", baseline="biased") == pytest.approx(0.0)


def test_prior_is_computed_under_the_condition_hooks(tiny, tokenizer):
    ds = cue_dataset(8)
    yes = _ids(tokenizer, "yes")

    def shift(model):
        def f(x, hook):
            x = x.clone()
            x[..., yes] += 3.0
            return x

        return [("unembed.hook_out", f)]

    res = run_tasks(
        tiny, tasks=[ds], conditions=["baseline", Condition("shift", shift, batch_safe=True)], scoring="calibrated"
    )
    p0, p1 = res.score("cue", "baseline").prior, res.score("cue", "shift").prior
    assert p1["yes"] > p0["yes"] + 0.1 and p1["no"] < p0["no"]
    # independent computation of the baseline prior from plain forward passes
    cf = content_free_prompts(tokenizer, ds, [])
    no = _ids(tokenizer, "no")
    rows = []
    for text in cf:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            lp = torch.log_softmax(tiny(ids)[0, -1].double(), -1)
        rows.append([float(lp[yes]), float(lp[no])])
    want = log_prior(np.array(rows))
    assert p0["yes"] == pytest.approx(want[0], abs=1e-5) and p0["no"] == pytest.approx(want[1], abs=1e-5)
    # the calibrated margin is the raw log-prob difference minus the prior difference
    for it in [x for x in res.items if x.condition == "baseline"]:
        d = (it.logprobs["yes"] - p0["yes"]) - (it.logprobs["no"] - p0["no"])
        assert it.margin == pytest.approx(d if it.answer == "yes" else -d)


def test_log_prior_averages_renormalised_probabilities():
    lp = np.log(np.array([[0.6, 0.2], [0.1, 0.1]]))  # renormalised: [.75,.25], [.5,.5]
    assert np.exp(log_prior(lp)) == pytest.approx([0.625, 0.375])


def test_demonstrations_are_balanced_disjoint_and_seeded(tokenizer):
    ds = cue_dataset(20, pool=12)
    ds.demo_pool.append(ds.items[0])  # even a leaked evaluated item is never drawn
    evaluated = {it.text for it in ds.items}
    for seed in range(6):
        d = draw_demonstrations(ds, 4, seed)
        assert [x.answer for x in d].count("yes") == 2 and not {x.text for x in d} & evaluated
        assert [x.text for x in d] == [x.text for x in draw_demonstrations(ds, 4, seed)]
    assert any(
        [x.text for x in draw_demonstrations(ds, 4, s)] != [x.text for x in draw_demonstrations(ds, 4, 0)]
        for s in range(1, 6)
    )
    d = draw_demonstrations(ds, 2, 0)
    p = build_prompt(tokenizer, ds, ds.items[3].text, d)
    assert p == f"{d[0].text} {d[0].answer}\n\n{d[1].text} {d[1].answer}\n\n{ds.items[3].text}"
    assert content_free_prompts(tokenizer, ds, d)[0].endswith(TEMPLATE.format(q="N/A"))
    with pytest.raises(ValueError, match="demo"):
        draw_demonstrations(cue_dataset(4, pool=1), 4, 0)
    with pytest.raises(ValueError, match="n_shot"):
        draw_demonstrations(ds, -1, 0)


def test_few_shot_run_uses_the_same_prompts_for_every_condition(tiny):
    ds = cue_dataset(6, pool=6)
    seen = {}

    def spy(name):
        def make(model):
            def f(x, hook):
                seen.setdefault(name, []).append(x.shape[1])

            return [("blocks.0.hook_resid_pre", f)]

        return Condition(name, make, batch_safe=True)

    r = run_tasks(tiny, tasks=[ds], conditions=[spy("a"), spy("b")], n_shot=2, scoring="calibrated", seed=3)
    assert seen["a"] == seen["b"] and len(seen["a"]) >= 2
    assert r.n_shot == 2 and len(r.demonstrations["cue"]) == 2
    r2 = run_tasks(tiny, tasks=[ds], conditions=["baseline"], n_shot=2, seed=3)
    assert r2.demonstrations == r.demonstrations
    zero = run_tasks(tiny, tasks=[ds], conditions=["baseline"], n_shot=0)
    assert [i.logprobs for i in zero.items] != [i.logprobs for i in r2.items]
    with pytest.raises(ValueError, match="n_shot"):
        run_tasks(tiny, tasks=[ds], conditions=["baseline"], n_shot=-2)


def test_auroc_against_an_independent_count():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(30, 2))
    y = np.array([0, 1] * 15)
    scores[y == 0, 0] += 1.0
    got, lo, hi = auroc(scores, y, seed=0)
    d = scores[:, 0] - scores[:, 1]
    pos, neg = d[y == 0], d[y == 1]
    want = np.mean([(p > q) + 0.5 * (p == q) for p in pos for q in neg])
    assert got == pytest.approx(want) and lo < got < hi
    assert auroc(scores, y, seed=0) == (got, lo, hi)  # seeded bootstrap
    assert auroc(scores + 5.0 * np.array([1.0, 0.0]), y)[0] == pytest.approx(got)  # shift-invariant
    assert _auc(np.array([1.0, 1.0]), np.array([1.0, 0.0])) == pytest.approx(0.75)


def test_category_summary_skips_at_chance_tasks():
    def sc(task, cat, cond, correct, n=40):
        from drope_lens.tasks.results import wilson_interval

        lo, hi = wilson_interval(correct, n)
        return TaskScore(task, cat, cond, n, correct, correct / n, lo, hi, chance=0.5)

    scores = [
        sc("a", "parametric", "baseline", 20),
        sc("a", "parametric", "x", 10),
        sc("b", "contextual", "baseline", 36),
        sc("b", "contextual", "x", 18),
    ]
    r = TaskResults(
        "m", "logprob", False, 0, ["a", "b"], {"a": "parametric", "b": "contextual"}, ["baseline", "x"], scores, []
    )
    assert r.degradation("a", "x") is None and r.degradation("b", "x") == pytest.approx(50.0)
    s = r.category_summary("x")
    assert s["parametric_degradation"] is None and s["contextual_degradation"] == pytest.approx(50.0)
    assert s["ratio"] is None and s["contextual_tasks"] == ["b"]
    d = r.to_dict()
    assert d["degradation"]["a/x"] is None and d["scores"][2]["above_chance"] is True


def test_report_section_reads_above_chance_tasks_and_validates(tiny):
    import json

    import jsonschema

    from drope_lens.report.markdown import AT_CHANCE, _tasks
    from drope_lens.report.schema import results_schema
    from drope_lens.tasks import compare_tasks

    ds = cue_dataset(8, pool=4)
    r = run_tasks(tiny, tasks=[ds], conditions=["baseline", "qk"], scoring="calibrated", n_shot=2)
    d = json.loads(json.dumps(compare_tasks(r, r).to_dict(include_items=False)))
    text = _tasks({}, {"tasks": d})
    assert "AUROC" in text and "2-shot" in text and "calibrated" in text
    base = r.score("cue", "baseline")
    assert (AT_CHANCE in text) == (not base.above_chance)
    assert ("above chance at baseline — cue" in text) == base.above_chance
    schema = results_schema()
    jsonschema.validate(d, {**schema["$defs"]["tasks"], "$defs": schema["$defs"]})
    d["rope"]["degradation"]["cue/qk"] = "n/a"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(d, {**schema["$defs"]["tasks"], "$defs": schema["$defs"]})


def completion_dataset(n=8, pool=4):
    """Completion items over the tiny vocabulary: each its own two continuations."""
    words = "cat dog red blue sky sun two three".split()

    def item(i):
        a, b = words[i % len(words)], words[(i + 3) % len(words)]
        return TaskItem(TEMPLATE.format(q=f"w{i}"), "A" if i % 2 == 0 else "B", {"q": f"w{i}", "choices": [a, b]})

    return TaskDataset(
        "comp",
        "parametric",
        "choice",
        [item(i) for i in range(n)],
        ("A", "B"),
        template=TEMPLATE,
        slot="q",
        content_key="q",
        demo_pool=[item(i) for i in range(n, n + pool)],
        choices_key="choices",
    )


def test_completion_items_scored_on_their_own_continuations_and_calibrated_per_item(tiny, tokenizer):
    from drope_lens.loading import encode
    from drope_lens.tasks.scoring import option_token_ids

    ds = completion_dataset()
    res = run_tasks(tiny, tasks=[ds], conditions=["baseline"], scoring="calibrated", n_shot=2, seed=1)
    demos = draw_demonstrations(ds, 2, 1)
    assert {d.text for d in demos}.isdisjoint(it.text for it in ds.items)
    prompt0 = build_prompt(tokenizer, ds, ds.items[0].text, demos)
    assert prompt0.startswith(f"{demos[0].text} {ds.answer_text(demos[0])}\n\n")

    @torch.no_grad()
    def direct(prompt, cont):  # independent: one plain forward of prompt + continuation
        p = encode(tokenizer, [prompt]).tokens[0].tolist()
        c = option_token_ids(tokenizer, [cont])[0]
        logp = torch.log_softmax(tiny(torch.tensor([p + c]))[0].double(), -1)
        return float(sum(logp[len(p) - 1 + j, t] for j, t in enumerate(c)))

    cf = content_free_prompts(tokenizer, ds, demos)
    score = res.score("comp", "baseline")
    for i, it in enumerate(ds.items):
        r = res.items[i]
        prompt = build_prompt(tokenizer, ds, it.text, demos)
        raw = [direct(prompt, c) for c in ds.choices(it)]
        assert [r.logprobs["A"], r.logprobs["B"]] == pytest.approx(raw, abs=1e-4)
        prior = log_prior(np.array([[direct(p, c) for c in ds.choices(it)] for p in cf]))
        cal = np.array(raw) - prior
        k = ds.options.index(it.answer)
        assert r.margin == pytest.approx(cal[k] - cal[1 - k], abs=1e-4)
        assert r.prediction == ds.options[int(np.argmax(cal))]
    assert set(score.prior) == {c for it in ds.items for c in ds.choices(it)}
    with pytest.raises(ValueError, match="completion"):
        run_tasks(tiny, tasks=[ds], conditions=["baseline"], scoring="study")


def test_report_reading_names_above_chance_tasks_and_their_degradation_only(tiny, tokenizer):
    """One task made above chance by a cue the model is forced to read, one left at chance."""
    import json

    from drope_lens.report.markdown import AT_CHANCE, _tasks
    from drope_lens.tasks import compare_tasks

    yes, no, cat, dog = (_ids(tokenizer, w) for w in ("yes", "no", "cat", "dog"))
    store = {}

    def logits(x, hook):  # 'cat' in the prompt -> yes, 'dog' -> no (every condition)
        toks = store["tokens"]
        sign = (toks == cat).any(-1).float() - (toks == dog).any(-1).float()
        x = x.clone()
        x[..., yes] += 5.0 * sign[:, None]
        x[..., no] -= 5.0 * sign[:, None]
        return x

    cue = cue_dataset(24)
    blind = TaskDataset(
        "blind",
        "contextual",
        "choice",
        [TaskItem(TEMPLATE.format(q=f"x {i}"), OPTS[i % 2], {"q": f"x {i}"}) for i in range(24)],
        OPTS,
        template=TEMPLATE,
        slot="q",
        content_key="q",
    )
    h = tiny.embed.register_forward_pre_hook(lambda mod, args: store.__setitem__("tokens", args[0]))
    try:
        with tiny.hooks(fwd_hooks=[("unembed.hook_out", logits)]):
            r = run_tasks(tiny, tasks=[cue, blind], conditions=["baseline", "qk"], scoring="calibrated")
    finally:
        h.remove()
    assert r.score("cue", "baseline").above_chance and not r.score("blind", "baseline").above_chance
    d = json.loads(json.dumps(compare_tasks(r, r).to_dict(include_items=False)))
    text = _tasks({}, {"tasks": d})
    deg = r.degradation("cue", "qk")
    assert deg is not None and r.degradation("blind", "qk") is None
    assert f"above chance at baseline — cue (qk {deg:.0f} %) degradation; at chance (not read): blind" in text
    rows = [line for line in text.splitlines() if line.startswith("| rope | ") and "| qk |" in line]
    assert any("| blind |" in row and AT_CHANCE in row for row in rows)
    assert any("| cue |" in row and AT_CHANCE not in row for row in rows)


# ------------------------------------------------------------------- few-shot without a demo pool
def no_pool_dataset(n=12):
    ds = cue_dataset(n, pool=0)
    assert ds.demo_pool == []
    return ds


def test_leave_one_out_demonstrations_never_show_the_item_and_are_balanced_and_seeded():
    from drope_lens.tasks.calibration import item_demonstrations, leave_one_out_demonstrations

    ds = no_pool_dataset(12)
    ds.items.append(TaskItem(ds.items[0].text, ds.items[0].answer, dict(ds.items[0].meta)))  # a duplicate prompt
    per_item = leave_one_out_demonstrations(ds, 4, seed=7)
    assert len(per_item) == len(ds.items)
    for i, demos in enumerate(per_item):
        assert all(d is not ds.items[i] for d in demos)
        assert ds.items[i].text not in {d.text for d in demos}  # nor a copy of its prompt
        assert [d.answer for d in demos].count("yes") == 2 and len(demos) == 4  # balanced over the options
        assert all(any(d is it for it in ds.items) for d in demos)  # drawn from the task's own items
    again = leave_one_out_demonstrations(ds, 4, seed=7)
    assert [[d.text for d in x] for x in again] == [[d.text for d in x] for x in per_item]  # seeded
    other = leave_one_out_demonstrations(ds, 4, seed=8)
    assert [[d.text for d in x] for x in other] != [[d.text for d in x] for x in per_item]
    assert len({tuple(d.text for d in x) for x in per_item}) > 1  # each item its own draw
    assert item_demonstrations(ds, 4, 7) == per_item  # no pool: leave-one-out
    pooled = cue_dataset(6, pool=6)
    shared = item_demonstrations(pooled, 2, 0)
    assert all(x is shared[0] for x in shared) and shared[0] == draw_demonstrations(pooled, 2, 0)
    assert leave_one_out_demonstrations(ds, 0, 7) == [[] for _ in ds.items]
    with pytest.raises(ValueError, match="too few items for 6-shot leave-one-out"):
        leave_one_out_demonstrations(no_pool_dataset(6), 6, 0)  # 3 'yes' in all: item i leaves 2 or 3


def test_few_shot_on_a_task_without_pool_scores_each_item_after_its_own_demonstrations(tiny, tokenizer):
    from drope_lens.loading import encode
    from drope_lens.tasks.calibration import leave_one_out_demonstrations
    from drope_lens.tasks.scoring import option_token_ids

    ds = no_pool_dataset(8)
    res = run_tasks(tiny, tasks=[ds], conditions=["baseline"], scoring="calibrated", n_shot=2, seed=4)
    per_item = leave_one_out_demonstrations(ds, 2, 4)
    rec = res.demonstrations["cue"]
    assert [r["item"] for r in rec] == list(range(8))
    assert all(r["item"] not in r["demos"] and len(r["demos"]) == 2 for r in rec)
    assert [[ds.items[j].text for j in r["demos"]] for r in rec] == [[d.text for d in x] for x in per_item]
    ids = [o[0] for o in option_token_ids(tokenizer, list(OPTS))]

    @torch.no_grad()
    def option_lp(prompt):  # independent: one plain forward of the prompt
        p = encode(tokenizer, [prompt]).tokens[0]
        logp = torch.log_softmax(tiny(p[None])[0, -1].double(), -1)
        return [float(logp[t]) for t in ids]

    for i, it in enumerate(ds.items):
        raw = option_lp(build_prompt(tokenizer, ds, it.text, per_item[i]))
        r = res.items[i]
        assert [r.logprobs["yes"], r.logprobs["no"]] == pytest.approx(raw, abs=1e-4)
        prior = log_prior(np.array([option_lp(p) for p in content_free_prompts(tokenizer, ds, per_item[i])]))
        cal = np.array(raw) - prior
        k = OPTS.index(it.answer)
        assert r.margin == pytest.approx(cal[k] - cal[1 - k], abs=1e-4)


def test_a_custom_file_loaded_whole_runs_few_shot(tiny, tmp_path):
    import json

    from drope_lens.tasks.custom import load_yes_no_file

    rows = [
        {"question": f"is {w} {i} a pet?", "answer": "yes" if w == "cat" else "no"}
        for i in range(6)
        for w in ("cat", "dog")
    ]
    path = tmp_path / "pets.json"
    path.write_text(json.dumps(rows))
    ds = load_yes_no_file(path)
    assert ds.demo_pool == []
    res = run_tasks(tiny, tasks=[ds], conditions=["baseline"], scoring="logprob", n_shot=2)
    assert len(res.demonstrations["custom"]) == len(rows) and res.score("custom", "baseline").n == len(rows)
