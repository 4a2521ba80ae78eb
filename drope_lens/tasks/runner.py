"""Run the knowledge tasks under each condition: :func:`run_tasks` (one model),
:func:`run_pair_tasks` / :func:`compare_tasks` (a RoPE model and its DroPE/NoPE twin).

Scoring (``scoring=``):

Generation runs right-padded batches of prompts of similar length, one KV-cache decode step for all
rows at a time (pads stay masked in the cache; every row decodes as it would alone).

* ``"logprob"`` (default): choice tasks compare ``log p(option | prompt)`` summed over each option's
  tokens (" Yes"/" No", " Positive"/" Negative"; no leading space after a chat template) and take
  the argmax, so every answer is parsed; the mean margin ``log p(correct) − max log p(other)`` is
  reported too. Passkey: greedy generation with the KV cache (at most 12 new tokens, stopping once
  the first digit run ends); correct iff the first run of digits equals the key.
* ``"calibrated"``: as ``"logprob"``, but each option's log-prob minus the option prior measured on
  content-free prompts under the same condition's hooks (contextual calibration, Zhao et al. 2021;
  see :mod:`drope_lens.tasks.calibration`). The prior is in ``TaskScore.prior``.
* ``"study"``: greedy generation of 20 tokens for every task and the study's parsing
  (``check_yes_no``, the IMDB rule, passkey substring), but **one denominator (all items) for all
  tasks**: an unparseable answer is wrong. The share of parsed answers is reported as ``parse_rate``.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.hooks.conditions import CONDITIONS, NEEDS_BOS
from drope_lens.loading.backend import Model
from drope_lens.loading.forward import model_label
from drope_lens.loading.tokens import encode
from drope_lens.options import (  # noqa: E402,F401  (SCORING, TASKS re-exported)
    DEFAULT_BATCH_SIZE,
    FORMATS,
    SCORING,
    TASKS,
    MeanReplacementOptions,
    TaskOptions,
    check_task_protocol,
    takes_options,
)
from drope_lens.tasks import parsing
from drope_lens.tasks.base import CATEGORIES, TaskDataset, TaskItem
from drope_lens.tasks.calibration import (
    CONTENT_FREE,
    auroc,
    build_prompt,
    content_free_prompts,
    item_demonstrations,
    item_log_priors,
    log_prior,
)
from drope_lens.tasks.conditions import (
    Condition,
    default_bos_layer,
    resolve_conditions,
    standard_condition,
)
from drope_lens.tasks.results import ItemResult, TaskComparison, TaskResults, TaskScore, wilson_interval
from drope_lens.tasks.scoring import format_prompt, greedy_generate_batch, option_logprobs, option_token_ids
from drope_lens.tasks.sizes import DEFAULT_N
from drope_lens.validation import check_batch_size

_D = TaskOptions.default  # run_tasks's defaults are TaskOptions' (drope_lens.options)
STUDY_MAX_NEW_TOKENS = 20
PASSKEY_MAX_NEW_TOKENS = 12

TaskSpec = Union[str, TaskDataset]


def _n_for(task: str, n: Union[None, int, Mapping[str, int]]) -> int:
    if n is None:
        return DEFAULT_N[task]
    if isinstance(n, Mapping):
        unknown = set(n) - set(TASKS)
        if unknown:
            raise DropeLensInputError(f"n has unknown task(s) {sorted(unknown)}; tasks are {TASKS}.")
        return n.get(task, DEFAULT_N[task])
    return n


def build_datasets(
    tokenizer,
    *,
    tasks: Sequence[TaskSpec] = _D("tasks"),
    n: Union[None, int, Mapping[str, int]] = _D("n"),
    seed: int = _D("seed"),
    chat: bool = _D("chat"),
    passkey_lengths: Sequence[int] = _D("passkey_lengths"),
    passkey_depth: float = _D("passkey_depth"),
    n_ctx: Optional[int] = None,
    task_format: str = _D("task_format"),
) -> list[TaskDataset]:
    """The datasets for ``tasks`` (names or ready :class:`TaskDataset` objects).

    ``n``: items per task (passkey: per length), an int for all tasks or a ``{task: n}`` mapping;
    defaults: cities 200, sports 100, sentiment 100, passkey 20 per length. ``task_format``: the
    parametric tasks as the study's yes/no questions or as two-way completions (see
    :func:`~drope_lens.tasks.cities.load_cities`).
    """
    if task_format not in FORMATS:
        raise ValueError(f"Unknown task_format {task_format!r}; choose from {FORMATS}.")
    from drope_lens.tasks.cities import load_cities
    from drope_lens.tasks.passkey import load_passkey
    from drope_lens.tasks.sentiment import load_sentiment
    from drope_lens.tasks.sports import load_sports

    if isinstance(tasks, (str, TaskDataset)):
        tasks = [tasks]
    out: list[TaskDataset] = []
    for task in tasks:
        if isinstance(task, TaskDataset):
            out.append(task)
        elif task == "cities":
            out.append(load_cities(_n_for(task, n), seed, form=task_format))
        elif task == "sports":
            out.append(load_sports(_n_for(task, n), seed, form=task_format))
        elif task == "sentiment":
            out.append(load_sentiment(_n_for(task, n), seed))
        elif task == "passkey":
            out.append(
                load_passkey(
                    tokenizer,
                    lengths=passkey_lengths,
                    n=_n_for(task, n),
                    depth=passkey_depth,
                    seed=seed,
                    n_ctx=n_ctx,
                    wrap=lambda s: format_prompt(tokenizer, s, chat=chat),
                )
            )
        else:
            raise DropeLensInputError(f"Unknown task {task!r}; choose from {TASKS} or pass a TaskDataset.")
    names = [d.name for d in out]
    if len(set(names)) != len(names):
        raise DropeLensInputError(f"Task names must be unique, got {names}.")
    if not out:
        raise DropeLensInputError("No tasks given.")
    return out


def _parse_choice(response: str, options: Sequence[str]) -> Optional[str]:
    if tuple(options) == ("Yes", "No"):
        return parsing.check_yes_no(response)
    if tuple(options) == ("Positive", "Negative"):
        return parsing.parse_sentiment(response)
    low = response.lower()
    hits = [(low.find(o.lower()), o) for o in options if o.lower() in low]
    return min(hits)[1] if hits else None


def _score_dataset(
    model,
    ds: TaskDataset,
    cond: Condition,
    *,
    scoring: str,
    chat: bool,
    batch_size: int,
    tick: Callable[[int], None],
    demos: Optional[Sequence[Sequence[TaskItem]]] = None,
) -> tuple[list[ItemResult], Optional[np.ndarray]]:
    """Item results and, for calibrated scoring, the log option prior (under the active hooks).

    ``demos``: one list of demonstrations per item (None: none)."""
    tok = model.tokenizer
    per_item: list[Sequence[TaskItem]] = [list(d) for d in demos] if demos is not None else [[] for _ in ds.items]
    if ds.kind == "choice":
        prompts = [build_prompt(tok, ds, it.text, d, chat=chat) for it, d in zip(ds.items, per_item, strict=True)]
    else:
        prompts = [format_prompt(tok, it.text, chat=chat) for it in ds.items]
    batch = encode(tok, prompts, n_ctx=model.cfg.n_ctx)
    results: list[ItemResult] = []
    if ds.kind == "choice" and scoring in ("logprob", "calibrated"):
        prefix = "" if chat else " "
        ids = option_token_ids(tok, ds.options, prefix=prefix)
        row_ids = [option_token_ids(tok, ds.choices(it), prefix=prefix) for it in ds.items] if ds.choices_key else None
        prior = None
        if scoring == "calibrated":
            groups = _demo_groups(per_item)
            if len(groups) == 1:  # the same demonstrations for every item (a pool, or none)
                prior = _content_free_prior(model, ds, per_item[0], ids, prefix, cond, chat, batch_size)
            else:  # leave-one-out: each item's prior after its own demonstrations
                prior = np.empty((len(ds.items), len(ds.options)))
                for rows in groups:
                    part = TaskDataset(**{**vars(ds), "items": [ds.items[i] for i in rows], "demo_pool": []})
                    got = _content_free_prior(model, part, per_item[rows[0]], ids, prefix, cond, chat, batch_size)
                    prior[rows] = got

        logp = option_logprobs(
            model, batch, ids, batch_size=batch_size, padded=cond.batch_safe, on_batch=tick, row_option_ids=row_ids
        )
        score = logp - torch.from_numpy(prior) if prior is not None else logp
        for i, it in enumerate(ds.items):
            row = score[i]
            pred: Optional[str] = ds.options[int(row.argmax())]
            k = ds.options.index(it.answer)
            others = torch.cat([row[:k], row[k + 1 :]])
            results.append(
                ItemResult(
                    ds.name,
                    cond.name,
                    i,
                    it.answer,
                    pred,
                    pred == it.answer,
                    float(row[k] - others.max()),
                    {o: float(v) for o, v in zip(ds.options, logp[i], strict=True)},
                )
            )
        return results, prior
    study = scoring == "study"
    if ds.choices_key:
        raise ValueError(
            f"Task {ds.name!r} is a completion task; scoring={scoring!r} generates and "
            "parses Yes/No answers — use task_format='yes_no' or log-prob scoring."
        )
    max_new = STUDY_MAX_NEW_TOKENS if study or ds.kind == "choice" else PASSKEY_MAX_NEW_TOKENS
    done: dict[int, ItemResult] = {}
    size = batch_size if cond.batch_safe else 1
    for idx, sub in batch.batches(size):  # similar lengths together, right-padded
        stop = None
        if ds.kind == "passkey" and not study:

            def stop(r, s, idx=idx):
                return parsing.passkey_done(s, len(ds.items[idx[r]].answer))

        gen = greedy_generate_batch(model, sub.tokens, max_new, lengths=sub.lengths, stop=stop)
        for i, (_, text) in zip(idx, gen, strict=True):
            it = ds.items[i]
            if ds.kind == "passkey":
                pred = parsing.first_number(text)
                ok = parsing.passkey_substring(text, it.answer) if study else parsing.passkey_exact(text, it.answer)
            else:
                pred = _parse_choice(text, ds.options)
                ok = pred == it.answer
            done[i] = ItemResult(ds.name, cond.name, i, it.answer, pred, bool(ok), output=text)
        tick(len(idx))
    return [done[i] for i in range(len(ds.items))], None


def _demo_groups(per_item: Sequence[Sequence[TaskItem]]) -> list[list[int]]:
    """Item indices grouped by identical demonstrations (first appearance order)."""
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, demos in enumerate(per_item):
        groups.setdefault(tuple(d.text for d in demos), []).append(i)
    return list(groups.values())


def _content_free_prior(
    model, ds: TaskDataset, demos: Sequence[TaskItem], ids, prefix: str, cond: Condition, chat: bool, batch_size: int
) -> np.ndarray:
    """The log option prior of ``ds``'s items after ``demos`` (under the active hooks): ``[n_options]``, or
    ``[n_items, n_options]`` for completion items (each its own continuations)."""
    tok = model.tokenizer
    cf = encode(tok, content_free_prompts(tok, ds, demos, chat=chat), n_ctx=model.cfg.n_ctx)
    if ds.choices_key:  # every distinct continuation once per filler, then per item
        conts = sorted({c for it in ds.items for c in ds.choices(it)})
        cf_lp = option_logprobs(
            model,
            cf,
            option_token_ids(tok, conts, prefix=prefix),
            batch_size=batch_size,
            padded=cond.batch_safe,
        ).numpy()
        return item_log_priors(ds, cf_lp, conts)
    return log_prior(option_logprobs(model, cf, ids, batch_size=batch_size, padded=cond.batch_safe).numpy())


def _summarise(
    ds: TaskDataset,
    cond: Condition,
    items: list[ItemResult],
    seconds: float,
    prior: Optional[np.ndarray] = None,
    *,
    seed: int = 0,
) -> TaskScore:
    n = len(items)
    correct = sum(it.correct for it in items)
    lo, hi = wilson_interval(correct, n)
    margins = [it.margin for it in items if it.margin == it.margin]
    auc = (math.nan, math.nan, math.nan)
    if ds.kind == "choice" and items and all(it.logprobs for it in items):
        scores = np.array([[it.logprobs[o] for o in ds.options] for it in items])
        if prior is not None:
            scores = scores - prior
        auc = auroc(scores, [ds.options.index(it.answer) for it in items], seed=seed)
    chance = 1.0 / len(ds.options) if ds.kind == "choice" else 0.0
    return TaskScore(
        ds.name,
        ds.category,
        cond.name,
        n,
        correct,
        correct / n if n else float("nan"),
        lo,
        hi,
        sum(margins) / len(margins) if margins else float("nan"),
        sum(it.prediction is not None for it in items) / n if n else float("nan"),
        seconds,
        auroc=auc[0],
        auroc_low=auc[1],
        auroc_high=auc[2],
        chance=chance,
        prior=_prior_dict(ds, prior),
    )


def _prior_dict(ds: TaskDataset, prior: Optional[np.ndarray]) -> Optional[dict[str, float]]:
    """The log option prior as reported: per option, or for completion items the mean log prior of
    each continuation over the items offering it."""
    if prior is None:
        return None
    if prior.ndim == 1:
        return {o: float(v) for o, v in zip(ds.options, prior, strict=True)}
    acc: dict[str, list[float]] = {}
    for it, row in zip(ds.items, prior, strict=True):
        for c, v in zip(ds.choices(it), row, strict=True):
            acc.setdefault(c, []).append(float(v))
    return {c: float(np.mean(v)) for c, v in sorted(acc.items())}


@takes_options(TaskOptions)
@torch.no_grad()
def run_tasks(
    model: Model,
    *,
    tasks: Sequence[TaskSpec] = _D("tasks"),
    conditions: Sequence[Union[str, Condition]] = _D("conditions"),
    n: Union[None, int, Mapping[str, int]] = _D("n"),
    seed: int = _D("seed"),
    bos_layer: Optional[int] = None,
    scoring: str = _D("scoring"),
    n_shot: int = _D("n_shot"),
    task_format: str = _D("task_format"),
    chat: bool = _D("chat"),
    batch_size: int = DEFAULT_BATCH_SIZE,
    passkey_lengths: Sequence[int] = _D("passkey_lengths"),
    passkey_depth: float = _D("passkey_depth"),
    bos_mode: str = _D("bos_mode"),
    qk_kwargs: Union[None, dict, MeanReplacementOptions] = None,
    progress: bool = False,
    label: Optional[str] = None,
) -> TaskResults:
    """Accuracy of ``model`` on each task under each condition (see the module docstring).

    Args:
        tasks: names from :data:`TASKS` and/or your own :class:`TaskDataset` objects.
        conditions: names from :data:`CONDITIONS` and/or :class:`Condition` objects.
        n: items per task (passkey: per length); int, ``{task: n}`` or None for the defaults.
        bos_layer: layer of the BOS-MLP ablation; ``None`` = the model's BOS spike layer on the
            built-in texts (computed only if a BOS condition is requested).
        scoring: ``"logprob"``, ``"calibrated"`` or ``"study"``. ``chat``: wrap prompts in the chat template.
        n_shot: demonstrations before each choice item (balanced over the options, drawn with
            ``seed`` from each task's demo pool; the same for every condition and model).
        task_format: cities and sports as ``"yes_no"`` questions (the study's) or ``"completion"``
            ("Q: In which country is X?" → log p(true country) vs log p(a distractor)); log-prob
            scoring only.
        options: (keyword) a :class:`~drope_lens.options.TaskOptions` filling every keyword above
            the call leaves out; keywords given override its fields.
    """
    check_task_protocol(scoring, n_shot, task_format)
    check_batch_size(batch_size)
    if model.tokenizer is None:
        raise DropeLensInputError("The model needs a tokenizer.")
    t0 = time.perf_counter()
    names = [
        c if isinstance(c, str) else c.name
        for c in ([conditions] if isinstance(conditions, (str, Condition)) else conditions)
    ]
    for c in [conditions] if isinstance(conditions, (str, Condition)) else conditions:
        if isinstance(c, str) and c not in CONDITIONS:  # names first, before the spike-layer search
            standard_condition(c)  # raises the unknown-condition error
    for t in [tasks] if isinstance(tasks, (str, TaskDataset)) else tasks:
        if isinstance(t, str) and t not in TASKS:
            raise DropeLensInputError(f"Unknown task {t!r}; choose from {TASKS} or pass a TaskDataset.")
    if bos_layer is None and any(c in NEEDS_BOS for c in names):
        bos_layer = default_bos_layer(model, batch_size=batch_size)
    conds = resolve_conditions(conditions, bos_layer=bos_layer, bos_mode=bos_mode, qk_kwargs=qk_kwargs)
    datasets = build_datasets(
        model.tokenizer,
        tasks=tasks,
        n=n,
        seed=seed,
        chat=chat,
        passkey_lengths=passkey_lengths,
        passkey_depth=passkey_depth,
        n_ctx=model.cfg.n_ctx,
        task_format=task_format,
    )
    demos = {d.name: item_demonstrations(d, n_shot, seed) if d.kind == "choice" else None for d in datasets}
    ds_by_name = {d.name: d for d in datasets}
    label = label or model_label(model)
    bar = None
    if progress:
        from drope_lens.progress import progress_bar

        bar = progress_bar(what="tasks", model=model, total=len(conds) * sum(len(d) for d in datasets))
    tick = (lambda k: bar.update(k)) if bar is not None else (lambda k: None)
    scores: list[TaskScore] = []
    items: list[ItemResult] = []
    try:
        for cond in conds:
            for ds in datasets:
                if bar is not None:
                    bar.set_postfix_str(f"{cond.name}/{ds.name}")
                t1 = time.perf_counter()
                with model.hooks(fwd_hooks=cond.make_hooks(model)):
                    res, prior = _score_dataset(
                        model,
                        ds,
                        cond,
                        scoring=scoring,
                        chat=chat,
                        batch_size=batch_size,
                        tick=tick,
                        demos=demos[ds.name],
                    )
                scores.append(_summarise(ds, cond, res, time.perf_counter() - t1, prior, seed=seed))
                items.extend(res)
    finally:
        if bar is not None:
            bar.close()
    return TaskResults(
        model=label,
        scoring=scoring,
        chat=chat,
        seed=seed,
        tasks=[d.name for d in datasets],
        categories={d.name: d.category for d in datasets},
        conditions=[c.name for c in conds],
        scores=scores,
        items=items,
        datasets={
            d.name: {
                "n": len(d),
                "label_counts": d.label_counts(),
                "source": d.source,
                "kind": d.kind,
                "options": list(d.options),
                "completion": bool(d.choices_key),
            }
            for d in datasets
        },
        condition_info={c.name: dict(c.info) for c in conds},
        n_shot=n_shot,
        task_format=task_format,
        demonstrations={k: _demonstrations_record(ds_by_name[k], v) for k, v in demos.items() if v and v[0]},
        content_free=list(CONTENT_FREE) if scoring == "calibrated" else [],
        wall_seconds=time.perf_counter() - t0,
    )


def _demonstrations_record(ds: TaskDataset, per_item: list[list[TaskItem]]) -> list[dict[str, Any]]:
    """What results record of a task's demonstrations: the shared ones (a pool) as items, or, for
    leave-one-out ones, per evaluated item the indices of its demonstrations among the items."""
    if all(d is per_item[0] for d in per_item):
        return [d.to_dict() for d in per_item[0]]
    index = {id(it): j for j, it in enumerate(ds.items)}
    return [{"item": i, "demos": [index[id(d)] for d in demos]} for i, demos in enumerate(per_item)]


def compare_tasks(rope_results: TaskResults, drope_results: TaskResults) -> TaskComparison:
    """Put two :func:`run_tasks` results side by side (same tasks, conditions, scoring, seed)."""
    return TaskComparison(rope_results, drope_results)


def run_pair_tasks(
    pair,
    *,
    bos_layer: Union[None, int, Mapping[str, Optional[int]]] = None,
    options: Optional[TaskOptions] = None,
    **kwargs: Any,
) -> TaskComparison:
    """:func:`run_tasks` on both models of a :class:`~drope_lens.loading.pair.ModelPair`.

    The datasets are built once and shared. ``bos_layer``: one layer for both, ``{"rope": l1,
    "drope": l2}``, or ``None`` (each model's own spike layer, as the study). ``options``: a
    :class:`~drope_lens.options.TaskOptions`; ``kwargs`` override its fields.
    """
    if options is not None:
        if not isinstance(options, TaskOptions):
            raise TypeError(f"options must be a TaskOptions, got {type(options).__name__}")
        kwargs = {**options.run_kwargs(), **kwargs}
    build_keys = (
        "n",
        "seed",
        "chat",
        "passkey_lengths",
        "passkey_depth",
        "task_format",
    )  # n_shot: drawn per run, seeded
    build_kw = {k: kwargs[k] for k in build_keys if k in kwargs}
    datasets = build_datasets(pair.tokenizer, tasks=kwargs.pop("tasks", _D("tasks")), n_ctx=pair.n_ctx, **build_kw)
    out = {}
    for role, model in pair.items():
        layer = bos_layer.get(role) if isinstance(bos_layer, Mapping) else bos_layer
        out[role] = run_tasks(model, tasks=datasets, bos_layer=layer, label=pair.labels.get(role), **kwargs)
    return compare_tasks(out["rope"], out["drope"])


__all__ = [
    "TASKS",
    "DEFAULT_N",
    "SCORING",
    "build_datasets",
    "run_tasks",
    "compare_tasks",
    "run_pair_tasks",
    "CATEGORIES",
]
