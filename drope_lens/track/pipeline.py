"""Track analyses over the checkpoints of a recalibration: RoPE original, step 0, every saved one.

:func:`track` loads each checkpoint in turn, runs the chosen metric groups with drope_lens's own
analyses (nothing is re-implemented here) and returns a :class:`TrackResult` whose
``to_dataframe()`` has one row per checkpoint × metric (``checkpoint``, ``role``, ``step``,
``tokens``, ``group``, ``metric``, ``value``; ``tokens`` is None for the RoPE reference).

Metric groups (``metrics=``):

* ``ppl`` -- perplexity on the run's held-out blocks (never trained on), else the built-in eval texts;
* ``massive`` -- :func:`~drope_lens.analysis.massive.detect_massive`: mean total count of massive
  Q/K/V channels, and mean Gini / top-1 % share of M per layer (concentration);
* ``sinks`` and ``bos`` -- one :func:`~drope_lens.analysis.profile_pass.phase_profile` pass: mean sink
  rate, Gu's Sink^ε; max BOS ratio, peak BOS norm, spike layer (both rules);
* ``disruption`` -- :func:`~drope_lens.analysis.interventions.phase_experiment` perplexity factors of the
  BOS-MLP ablation (spike layer) and Q/K mean replacement (condition ppl / baseline ppl), and
  :func:`~drope_lens.analysis.disruption.run_disruption`'s massive-channel zeroing (massive %, M−R);
* ``passkey`` -- passkey accuracy (:func:`~drope_lens.tasks.run_tasks`, baseline).

Resumable checkpoint by checkpoint: with ``out`` set, each (checkpoint, group) result is saved
atomically under ``out/parts/`` keyed (like the report) by the options and the loaded model's
identity (:func:`~drope_lens.runs.provenance.model_identity`: config and weights hash), and reused
when both match.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.options import (  # noqa: F401  (re-exported)
    DEFAULT_METRICS,
    METRIC_GROUPS,
    SIZES,
    TrackOptions,
    TrackSizes,
    check_metrics,
)


@dataclass(frozen=True)
class TrackPoint:
    """One model to measure: a name, its folder, whether it is the RoPE reference, step/tokens."""

    name: str
    path: str
    role: str  # "rope" (reference) or "drope"
    step: Optional[int] = None
    tokens: Optional[int] = None
    heldout: Optional[str] = None  # held-out token file of the run, if known


def checkpoint_points(paths: Sequence[Union[str, os.PathLike]], *, include_rope: bool = True) -> list[TrackPoint]:
    """Expand folders into :class:`TrackPoint` s. A recalibration run folder gives its RoPE source
    (if ``include_rope``) and every checkpoint; a checkpoint folder gives itself; any other model
    folder is measured as given (role from its config: RoPE or DroPE)."""
    from drope_lens.recalibrate import checkpoint as ck
    from drope_lens.recalibrate.train import HELDOUT_FILE, RUN_FILE

    points: list[TrackPoint] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.is_dir():
            raise DropeLensInputError(f"{raw}: not a folder (give checkpoint folders or a recalibration run folder)")
        if (p / RUN_FILE).is_file():
            import json

            run = json.loads((p / RUN_FILE).read_text())
            held = str(p / HELDOUT_FILE) if (p / HELDOUT_FILE).is_file() else None
            if include_rope:
                points.append(TrackPoint("rope", run["source"], "rope", heldout=held))
            for c in ck.list_checkpoints(p):
                m = ck.checkpoint_meta(c)
                points.append(TrackPoint(c.name, str(c), "drope", m["step"], m["tokens"], held))
            continue
        if not (p / "config.json").is_file():
            raise DropeLensInputError(f"{raw}: no config.json; not a model folder or a recalibration run")
        meta = ck.read_meta(p)
        if meta is not None:
            held = (p / meta.get("heldout", "")).resolve() if meta.get("heldout") else None
            points.append(
                TrackPoint(
                    p.name,
                    str(p),
                    "drope",
                    meta["step"],
                    meta["tokens"],
                    str(held) if held is not None and held.is_file() else None,
                )
            )
        else:
            from drope_lens.loading.source import drope_facts as _drope_facts
            from drope_lens.loading.source import read_config_dict

            role = "drope" if _drope_facts(read_config_dict(p))[0] else "rope"
            points.append(TrackPoint(p.name, str(p), role))
    names = [pt.name for pt in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DropeLensInputError(f"two checkpoints share the name(s) {dup}; track one run folder at a time")
    if not points:
        raise DropeLensInputError("no checkpoints to track")
    return points


@dataclass
class TrackResult:
    """Per checkpoint and metric group: scalars (and per-layer curves where the metric has them)."""

    points: list[TrackPoint]
    metrics: tuple[str, ...]
    values: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # name -> group -> result
    options: dict = field(default_factory=dict)
    wall_s: float = 0.0

    def rows(self) -> list[dict]:
        """One dict per checkpoint × scalar metric."""
        out = []
        for pt in self.points:
            for group in self.metrics:
                res = self.values.get(pt.name, {}).get(group)
                if res is None:
                    continue
                for metric, value in res["scalars"].items():
                    out.append(
                        {
                            "checkpoint": pt.name,
                            "role": pt.role,
                            "step": pt.step,
                            "tokens": pt.tokens,
                            "group": group,
                            "metric": metric,
                            "value": value,
                            "layers": res.get("layers", {}).get(metric),
                        }
                    )
        return out

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows())

    def to_dict(self) -> dict:
        return {
            "metrics": list(self.metrics),
            "options": self.options,
            "wall_s": round(self.wall_s, 2),
            "checkpoints": [pt.__dict__ for pt in self.points],
            "rows": self.rows(),
        }

    def series(self, metric: str) -> tuple[list[int], list[float], Optional[float]]:
        """``(tokens, values, rope_value)`` of one metric over the DroPE checkpoints, by tokens."""
        df = self.to_dataframe()
        df = df[df.metric == metric]
        d = df[df.role == "drope"].dropna(subset=["tokens"]).sort_values("tokens")
        r = df[df.role == "rope"]["value"]
        return d.tokens.astype(int).tolist(), d.value.astype(float).tolist(), (float(r.iloc[0]) if len(r) else None)

    def summary(self) -> str:
        df = self.to_dataframe()
        if df.empty:
            return "(no rows)"
        table = df.pivot_table(index="metric", columns="checkpoint", values="value", aggfunc="first")
        return table[[p.name for p in self.points if p.name in table.columns]].to_string(
            float_format=lambda v: f"{v:.4g}"
        )


def _load(pt: TrackPoint, dtype, device, quantize: Optional[str] = None):
    from drope_lens.loading.embedded import EMBEDDED_NAME, embedded_checkpoint
    from drope_lens.loading.load import load_hooked

    name = EMBEDDED_NAME if Path(pt.path) == embedded_checkpoint() else None
    return load_hooked(pt.path, dtype=dtype, device=device, model_name=name, quantize=quantize)


def _heldout(pt: TrackPoint, n_blocks: int):
    if pt.heldout:
        from safetensors.torch import load_file

        return load_file(pt.heldout)["tokens"][:n_blocks], f"held-out blocks ({pt.heldout})"
    from drope_lens.data.texts import builtin_split

    return builtin_split()["eval"], "built-in eval texts"


def _massive(model, texts, max_length) -> dict:
    from drope_lens.analysis.massive import detect_massive

    mv = detect_massive(model, texts, max_length=max_length)
    scalars, layers = {}, {}
    for t in mv.tensors:
        conc = mv.concentration(t)
        scalars[f"massive_{t}_total"] = mv.total_mean(t)
        scalars[f"massive_{t}_gini"] = float(conc["gini"].double().mean())
        scalars[f"massive_{t}_top1pct_share"] = float(conc["top_share"].double().mean())
        layers[f"massive_{t}_total"] = mv.per_layer_mean(t).tolist()
        layers[f"massive_{t}_gini"] = conc["gini"].double().mean(0).tolist()
    return {"scalars": scalars, "layers": layers}


def _phase(profile, group: str) -> dict:
    s, st = profile.summary(), profile.layer_stats()
    if group == "sinks":
        return {
            "scalars": {"sink_rate": s["mean_sink_rate"], "gu_sink": s["gu_sink"]},
            "layers": {"sink_rate": st["sink_rate"].tolist(), "gu_sink": st["gu_rate"].tolist()},
        }
    return {
        "scalars": {
            "max_bos_ratio": s["max_bos_ratio"],
            "peak_bos_norm": s["peak_bos_norm"],
            "spike_layer": s["spike_layer_argmax"],
            "spike_layer_first_above": s["spike_layer_first_above"],
        },
        "layers": {"max_bos_ratio": st["bos_ratio"].tolist(), "peak_bos_norm": st["bos_norm"].tolist()},
    }


def _disruption(model, texts, max_length, n_seeds) -> dict:
    """BOS-MLP / Q/K-mean perplexity factors on ``texts``; massive-channel zeroing as in
    :func:`~drope_lens.analysis.disruption.run_disruption` (its default texts and selection). A
    checkpoint without massive Q/K channels gets None for the zeroing metrics, with a note."""
    from drope_lens.analysis.disruption import run_disruption
    from drope_lens.analysis.interventions import phase_experiment
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.data.texts import builtin_split

    exp = phase_experiment(model, texts, conditions=("baseline", "bos_mlp", "qk"), max_length=max_length)
    ppl = {c: r.ppl for c, r in exp.conditions.items() if r.ppl is not None}  # measured for each condition
    base = ppl["baseline"]["ppl"]
    scalars = {"bos_mlp_ppl_factor": ppl["bos_mlp"]["ppl"] / base, "qk_mean_ppl_factor": ppl["qk"]["ppl"] / base}
    sel = detect_massive(
        model, builtin_split()["identify"], tensors=("q", "k"), rotary="pre", max_length=max_length, top=0
    ).selection("mean_norm")
    out: dict[str, Any] = {"scalars": scalars, "bos_layer": exp.bos_layer}
    if sel.total() == 0:
        scalars.update(massive_zero_pct=None, random_zero_pct=None, m_minus_r=None)
        out["note"] = "no massive Q/K channels: nothing to zero"
        return out
    dis = run_disruption(model, massive=sel, n_seeds=n_seeds, max_length=max_length, n_resamples=999)
    scalars.update(massive_zero_pct=dis.massive_pct, random_zero_pct=dis.random_mean, m_minus_r=dis.m_minus_r)
    return out


def _passkey(model, n, length) -> dict:
    from drope_lens.tasks import run_tasks

    res = run_tasks(model, tasks=("passkey",), conditions=("baseline",), n={"passkey": n}, passkey_lengths=(length,))
    return {"scalars": {"passkey_acc": res.accuracy("passkey", "baseline")}}


def track(
    checkpoints: Sequence[Union[str, os.PathLike, TrackPoint]],
    metrics: Union[str, Sequence[str], None] = None,
    *,
    options: Optional[TrackOptions] = None,
    out: Union[str, os.PathLike, None] = None,
    texts: Optional[Sequence[str]] = None,
    dtype: Union[str, torch.dtype] = torch.float32,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    quantize: Optional[str] = None,
    **overrides: Any,
) -> TrackResult:
    """Run the metric groups on every checkpoint (see the module docstring); resumable with ``out``.

    ``checkpoints``: folders (a recalibration run folder expands to RoPE source + all checkpoints,
    unless ``include_rope=False``) or :class:`TrackPoint` s. ``options``:
    :class:`~drope_lens.options.TrackOptions` (``metrics``, the :class:`TrackSizes`,
    ``include_rope``); ``metrics`` and keywords (``max_length=``, ``n_seeds=``, ...) override its
    fields. ``texts``: texts for massive/sinks/bos/disruption (default: the 15 built-in texts), cut
    at ``max_length`` tokens. ``quantize``: load every checkpoint quantized (``"nf4"``, ``"fp4"``, ``"int8"``;
    bridge backend, see :func:`~drope_lens.loading.load.load_hooked`); saved parts key on it.
    """
    o = TrackOptions.resolve(options, {**overrides, **({} if metrics is None else {"metrics": metrics})})
    metrics = o.metrics
    max_length, heldout_blocks, n_seeds = o.max_length, o.heldout_blocks, o.n_seeds
    passkey_n, passkey_length = o.passkey_n, o.passkey_length
    points = [c for c in checkpoints if isinstance(c, TrackPoint)]
    folders = [c for c in checkpoints if not isinstance(c, TrackPoint)]
    if folders:
        points += checkpoint_points(folders, include_rope=o.include_rope)
    if not points:
        raise DropeLensInputError("no checkpoints to track")
    from drope_lens.data.texts import builtin_texts
    from drope_lens.runs.provenance import model_identity
    from drope_lens.runs.store import PartStore, fingerprint

    texts = list(texts) if texts is not None else builtin_texts()
    keyed = {**o.sizes().to_dict(), "n_texts": len(texts), "texts_hash": fingerprint({"texts": texts})}
    store = PartStore(Path(out)) if out is not None else None
    result = TrackResult(points, metrics, options=keyed)
    t0 = time.perf_counter()
    for i, pt in enumerate(points):
        if progress:
            what = "RoPE reference" if pt.tokens is None else f"{pt.tokens:,} tokens"
            print(f"[track {i + 1}/{len(points)}] {pt.name} ({what})", file=sys.stderr, flush=True)
        model = _load(pt, dtype, device, quantize)
        ident = model_identity(model)
        got: dict[str, dict] = {}
        profile = None
        for group in metrics:
            step = f"{pt.name}.{group}"
            opts = {"group": group, **keyed, "heldout": pt.heldout if group == "ppl" else None}
            if store is not None and not force:
                saved = store.load(step, opts, ident)
                if saved is not None:
                    got[group] = saved
                    continue
            g0 = time.perf_counter()
            if group == "ppl":
                from drope_lens.analysis.perplexity import perplexity

                data, what = _heldout(pt, heldout_blocks)
                ppl = perplexity(model, data, max_length=None if pt.heldout else max_length)
                res = {"scalars": {"ppl_heldout": ppl.ppl}, "on": what, "n_targets": ppl.n_targets}
            elif group == "massive":
                res = _massive(model, texts, max_length)
            elif group in ("sinks", "bos"):
                if profile is None:
                    from drope_lens.analysis.profile_pass import phase_profile

                    profile = phase_profile(model, texts, max_length=max_length)
                res = _phase(profile, group)
            elif group == "disruption":
                res = _disruption(model, texts, max_length, n_seeds)
            else:
                res = _passkey(model, passkey_n, passkey_length)
            res["seconds"] = round(time.perf_counter() - g0, 2)
            if store is not None:
                store.save(step, opts, res, res["seconds"], ident)
            got[group] = res
        result.values[pt.name] = got
        del model
    result.wall_s = time.perf_counter() - t0
    return result
