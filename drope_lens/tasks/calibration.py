"""Few-shot prompts, contextual calibration (Zhao et al. 2021) and the AUROC of the option margin.

* Demonstrations (:func:`draw_demonstrations`): ``k`` items balanced over the options, drawn with
  ``random.Random(seed)`` from the task's ``demo_pool`` (disjoint from the evaluated items), the
  same for every item, condition and model. A task without a pool (your own file loaded whole, a
  :class:`TaskDataset` you built) gets **leave-one-out** demonstrations, as lm-eval draws few-shot
  examples from the evaluated split when a task has no other: for item ``i``, ``k`` of the *other*
  items, balanced over the options, drawn with ``random.Random(f"{seed}/{i}")`` — never item ``i``
  itself nor an item with the same prompt text (:func:`leave_one_out_demonstrations`); the same for
  every condition and model. :func:`item_demonstrations` gives either, one list per item. Plain
  prompts put them before the item as ``<filled template> <answer>\\n\\n``; with the chat template
  each is a user turn + assistant turn.
* Contextual calibration: the option prior is measured on content-free prompts (the task's template,
  with the same demonstrations, whose content is each of :data:`CONTENT_FREE`), under the same hooks
  as the items (with leave-one-out demonstrations: once per distinct set of demonstrations, so each
  item's prior is measured after its own demonstrations). Per filler the option probabilities are
  renormalised over the options, the *probabilities* are averaged over the fillers, and ``log prior
  = log(mean)``. An item's calibrated score is ``log p(option | item) − log prior(option)`` (the
  arg-max equals Zhao et al.'s ``W = diag(p_cf)^-1``). No label is used. Completion items (each with
  its own continuations): the content-free log-probs of every distinct continuation are measured
  once per filler, and each item's prior is :func:`log_prior` of its own continuations' columns
  (:func:`item_log_priors`).
* AUROC (:func:`auroc`): for an option ``o``, the items whose answer is ``o`` are positives and the
  score is ``s(o) − max s(other)``; binary tasks use the first option (one-vs-rest macro average
  otherwise). A constant shift of the scores (calibration of a binary task) leaves it unchanged.
  95 % CI: :func:`scipy.stats.bootstrap` (percentile, positives and negatives resampled separately,
  seeded).
"""

from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np

from drope_lens.errors import DropeLensInputError
from drope_lens.tasks.base import TaskDataset, TaskItem, sample_balanced
from drope_lens.tasks.scoring import format_prompt

CONTENT_FREE = ("N/A", "", "[MASK]")
N_BOOTSTRAP = 2000


def draw_demonstrations(ds: TaskDataset, k: int, seed: int) -> list[TaskItem]:
    """``k`` demonstrations of ``ds``, balanced over its options (see the module docstring)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"n_shot must be an int >= 0, got {k!r}")
    if k == 0:
        return []
    if ds.kind != "choice":
        raise ValueError(f"Task {ds.name!r} ({ds.kind}): few-shot prompts are for choice tasks only.")
    if not ds.demo_pool:
        raise ValueError(
            f"Task {ds.name!r} has no demo_pool to draw {k} shared demonstrations from; "
            "item_demonstrations() draws leave-one-out ones from the other items instead."
        )
    evaluated = {it.text for it in ds.items}
    pool = [it for it in ds.demo_pool if it.text not in evaluated]
    return sample_balanced(
        pool, k, random.Random(seed).randrange(2**31), what=f"the demo pool of {ds.name!r}", options=ds.options
    )


def leave_one_out_demonstrations(ds: TaskDataset, k: int, seed: int) -> list[list[TaskItem]]:
    """For each item ``i`` of ``ds``: ``k`` demonstrations drawn from the other items (see the module docstring)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"n_shot must be an int >= 0, got {k!r}")
    if k == 0:
        return [[] for _ in ds.items]
    if ds.kind != "choice":
        raise ValueError(f"Task {ds.name!r} ({ds.kind}): few-shot prompts are for choice tasks only.")
    out = []
    for i, item in enumerate(ds.items):
        others = [it for j, it in enumerate(ds.items) if j != i and it.text != item.text]
        try:
            out.append(
                sample_balanced(
                    others,
                    k,
                    random.Random(f"{seed}/{i}").randrange(2**31),
                    what=f"the other items of {ds.name!r} (leave-one-out, item {i})",
                    options=ds.options,
                )
            )
        except DropeLensInputError as exc:
            raise DropeLensInputError(
                f"Task {ds.name!r} has no demo_pool and too few items for {k}-shot leave-one-out "
                f"demonstrations balanced over {ds.options}: {exc} Use fewer shots, more items, or a demo_pool."
            ) from exc
    return out


def item_demonstrations(ds: TaskDataset, k: int, seed: int) -> list[list[TaskItem]]:
    """One list of demonstrations per item of ``ds``: the pool's (the same for all) or leave-one-out ones."""
    if k and ds.kind == "choice" and not ds.demo_pool:
        return leave_one_out_demonstrations(ds, k, seed)
    demos = draw_demonstrations(ds, k, seed)
    return [demos for _ in ds.items]


def build_prompt(tokenizer, ds: TaskDataset, text: str, demos: Sequence[TaskItem], *, chat: bool = False) -> str:
    """The model's input for one item ``text`` (a filled template) after ``demos``."""
    if not demos:
        return format_prompt(tokenizer, text, chat=chat)
    if not chat:
        return "".join(f"{d.text} {ds.answer_text(d)}\n\n" for d in demos) + text
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat=True needs a tokenizer with a chat template (an instruct model).")
    msgs = []
    for d in demos:
        msgs += [{"role": "user", "content": d.text}, {"role": "assistant", "content": ds.answer_text(d)}]
    msgs.append({"role": "user", "content": text})
    out = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    return out[len(bos) :] if bos and out.startswith(bos) else out


def content_free_prompts(
    tokenizer, ds: TaskDataset, demos: Sequence[TaskItem], *, chat: bool = False, fillers: Sequence[str] = CONTENT_FREE
) -> list[str]:
    return [build_prompt(tokenizer, ds, ds.fill(f), demos, chat=chat) for f in fillers]


def log_prior(cf_logprobs: np.ndarray) -> np.ndarray:
    """``[n_fillers, n_options]`` option log-probs → log of the mean renormalised probabilities."""
    lp = np.asarray(cf_logprobs, dtype=np.float64)
    lp = lp - np.logaddexp.reduce(lp, axis=1, keepdims=True)
    return np.log(np.exp(lp).mean(0))


def item_log_priors(ds: TaskDataset, cf_logprobs: np.ndarray, continuations: Sequence[str]) -> np.ndarray:
    """``[n_items, n_options]`` log priors of completion items from ``[n_fillers, n_continuations]``
    content-free log-probs of ``continuations`` (each item: :func:`log_prior` of its columns)."""
    col = {c: j for j, c in enumerate(continuations)}
    lp = np.asarray(cf_logprobs, dtype=np.float64)
    return np.stack([log_prior(lp[:, [col[c] for c in ds.choices(it)]]) for it in ds.items])


def _auc(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann–Whitney AUROC P(pos > neg) + ½ P(tie), vectorised over leading axes."""
    p = np.moveaxis(pos, axis, -1)[..., :, None]
    q = np.moveaxis(neg, axis, -1)[..., None, :]
    return ((p > q) + 0.5 * (p == q)).mean(axis=(-2, -1))


def margins_by_option(scores: np.ndarray) -> np.ndarray:
    """``s(o) − max s(other)`` for every item and option."""
    s = np.asarray(scores, dtype=np.float64)
    out = np.empty_like(s)
    for j in range(s.shape[1]):
        out[:, j] = s[:, j] - np.delete(s, j, axis=1).max(1)
    return out


def auroc(
    scores: np.ndarray, answers: Sequence[int], *, seed: int = 0, n_resamples: int = N_BOOTSTRAP
) -> tuple[float, float, float]:
    """AUROC of the option margin and its bootstrap 95 % CI (NaN where a class is missing)."""
    from scipy.stats import bootstrap

    m = margins_by_option(scores)
    y = np.asarray(answers)
    opts = [0] if m.shape[1] == 2 else list(range(m.shape[1]))
    vals, lows, highs = [], [], []
    for j in opts:
        pos, neg = m[y == j, j], m[y != j, j]
        if len(pos) == 0 or len(neg) == 0:
            return math.nan, math.nan, math.nan
        vals.append(float(_auc(pos, neg)))
        if len(pos) < 2 or len(neg) < 2:
            lows.append(math.nan)
            highs.append(math.nan)
            continue
        res = bootstrap(
            (pos, neg),
            _auc,
            vectorized=True,
            paired=False,
            n_resamples=n_resamples,
            batch=200,
            method="percentile",
            random_state=np.random.default_rng(seed),
        )
        lows.append(float(res.confidence_interval.low))
        highs.append(float(res.confidence_interval.high))
    return float(np.mean(vals)), float(np.mean(lows)), float(np.mean(highs))
