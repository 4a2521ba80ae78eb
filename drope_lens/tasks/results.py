"""Results of the knowledge tasks: accuracy with Wilson intervals, degradation, category averages.

* ``accuracy = correct / n`` with one denominator (all items) for every task and scoring mode.
* Wilson 95% interval (``scipy.stats.binomtest(...).proportion_ci(method="wilson")``).
* ``degradation = (baseline − condition) / baseline · 100``, only where the baseline is above chance
  (its Wilson CI lies wholly above ``chance``: 1/#options, passkey 0); otherwise ``None`` ("baseline
  at chance — degradation not meaningful"). The plain function :func:`degradation` is NaN at base 0.
* Category average (parametric: cities, sports; contextual: sentiment, passkey) = mean of the
  degradations of the category's above-chance tasks; ``None`` if none.
* ``ratio = contextual / parametric`` average degradation; ``None`` if either is None or parametric is 0.
* AUROC of the option margin with a bootstrap CI (:mod:`drope_lens.tasks.calibration`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

CATEGORY_ORDER = ("parametric", "contextual")


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (NaN, NaN for n = 0)."""
    if n == 0:
        return math.nan, math.nan
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def degradation(base: float, cond: float) -> float:
    """``(base − cond) / base · 100``; NaN when ``base`` is 0 or NaN."""
    if not base or math.isnan(base) or math.isnan(cond):
        return math.nan
    return (base - cond) / base * 100.0


def _nanmean(values: list[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


@dataclass
class TaskScore:
    """Accuracy of one task under one condition."""

    task: str
    category: str
    condition: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    mean_margin: float = math.nan  # log p(correct) − max log p(other option); choice tasks, logprob
    parse_rate: float = 1.0  # study mode: share of answers the study's parser understood
    seconds: float = 0.0
    auroc: float = math.nan  # AUROC of the option margin (choice tasks, log-prob scoring)
    auroc_low: float = math.nan
    auroc_high: float = math.nan
    chance: float = 0.0  # accuracy of a constant guess on the balanced items
    prior: Optional[dict[str, float]] = None  # calibrated: log option prior (content-free prompts)

    @property
    def above_chance(self) -> bool:
        """The Wilson CI lies wholly above the chance level."""
        return bool(self.ci_low == self.ci_low and self.ci_low > self.chance)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ItemResult:
    """One item's prediction under one condition."""

    task: str
    condition: str
    index: int
    answer: str
    prediction: Optional[str]
    correct: bool
    margin: float = math.nan
    logprobs: dict[str, float] = field(default_factory=dict)
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TaskResults:
    """All tasks × conditions of one model, with per-item predictions."""

    model: str
    scoring: str
    chat: bool
    seed: int
    tasks: list[str]
    categories: dict[str, str]
    conditions: list[str]
    scores: list[TaskScore]
    items: list[ItemResult]
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    condition_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    wall_seconds: float = 0.0
    n_shot: int = 0
    task_format: str = "yes_no"
    demonstrations: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    content_free: list[str] = field(default_factory=list)

    def score(self, task: str, condition: str) -> TaskScore:
        for s in self.scores:
            if s.task == task and s.condition == condition:
                return s
        raise KeyError(f"No score for task {task!r} under condition {condition!r}.")

    def accuracy(self, task: str, condition: str) -> float:
        return self.score(task, condition).accuracy

    def informative(self, task: str, baseline: str = "baseline") -> bool:
        """The task's baseline is above chance, so its degradation means something."""
        return self.score(task, baseline).above_chance

    def degradation(self, task: str, condition: str, baseline: str = "baseline") -> Optional[float]:
        """Degradation in %, or ``None`` where the baseline is at chance (not meaningful)."""
        if not self.informative(task, baseline):
            return None
        return degradation(self.accuracy(task, baseline), self.accuracy(task, condition))

    def category_summary(self, condition: str, baseline: str = "baseline") -> dict[str, Any]:
        """Mean accuracy and mean degradation (above-chance tasks only) per category, and the
        contextual/parametric ratio; ``None`` where no task of a category is above chance."""
        out: dict[str, Any] = {}
        for cat in CATEGORY_ORDER:
            tasks = [t for t in self.tasks if self.categories[t] == cat]
            out[f"{cat}_accuracy"] = _nanmean([self.accuracy(t, condition) for t in tasks])
            degs = [self.degradation(t, condition, baseline) for t in tasks] if baseline in self.conditions else []
            mean = _nanmean([d for d in degs if d is not None])
            out[f"{cat}_degradation"] = None if math.isnan(mean) else mean
            out[f"{cat}_tasks"] = [t for t, d in zip(tasks, degs, strict=False) if d is not None and not math.isnan(d)]
        p, c = out["parametric_degradation"], out["contextual_degradation"]
        out["ratio"] = c / p if (p and c is not None) else None
        return out

    def summary(self) -> dict[str, dict[str, float]]:
        return {c: self.category_summary(c) for c in self.conditions}

    def to_dataframe(self):
        """One row per task × condition (accuracy, CI, margin, parse rate, degradation)."""
        import pandas as pd

        rows = []
        for s in self.scores:
            row = {"model": self.model, **s.to_dict(), "above_chance": s.above_chance}
            row["degradation"] = self.degradation(s.task, s.condition) if "baseline" in self.conditions else None
            rows.append(row)
        return pd.DataFrame(rows)

    def items_dataframe(self):
        import pandas as pd

        return pd.DataFrame([{"model": self.model, **it.to_dict()} for it in self.items])

    def to_dict(self, *, include_items: bool = True) -> dict[str, Any]:
        out = {
            k: getattr(self, k)
            for k in (
                "model",
                "scoring",
                "chat",
                "seed",
                "tasks",
                "categories",
                "conditions",
                "datasets",
                "condition_info",
                "wall_seconds",
                "n_shot",
                "task_format",
                "demonstrations",
                "content_free",
            )
        }
        out["scores"] = [{**s.to_dict(), "above_chance": s.above_chance} for s in self.scores]
        out["degradation"] = {
            s.task + "/" + s.condition: self.degradation(s.task, s.condition)
            for s in self.scores
            if "baseline" in self.conditions
        }
        out["summary"] = self.summary()
        if include_items:
            out["items"] = [it.to_dict() for it in self.items]
        return out


@dataclass
class TaskComparison:
    """The same tasks and conditions run on a RoPE model and its DroPE/NoPE twin."""

    rope: TaskResults
    drope: TaskResults

    def __post_init__(self) -> None:
        for attr in ("tasks", "conditions", "scoring", "seed", "n_shot", "task_format"):
            if getattr(self.rope, attr) != getattr(self.drope, attr):
                raise ValueError(
                    f"The two results differ in {attr}: {getattr(self.rope, attr)} vs "
                    f"{getattr(self.drope, attr)}; run both with the same settings."
                )

    def items(self):
        return [("rope", self.rope), ("drope", self.drope)]

    def to_dataframe(self):
        """Long table: one row per model role × task × condition."""
        import pandas as pd

        frames = []
        for role, res in self.items():
            df = res.to_dataframe()
            df.insert(0, "role", role)
            frames.append(df)
        return pd.concat(frames, ignore_index=True)

    def accuracy_table(self):
        """Wide table: task rows, (role, condition) accuracy columns."""
        df = self.to_dataframe()
        return df.pivot_table(index="task", columns=["role", "condition"], values="accuracy", sort=False)

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        return {role: res.summary() for role, res in self.items()}

    def to_dict(self, *, include_items: bool = True) -> dict[str, Any]:
        return {
            "rope": self.rope.to_dict(include_items=include_items),
            "drope": self.drope.to_dict(include_items=include_items),
            "summary": self.summary(),
        }
