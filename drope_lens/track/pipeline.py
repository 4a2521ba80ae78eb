"""Track analyses over the checkpoints of a recalibration: RoPE original, step 0, every saved one.

The checkpoints come from a drope_lens run folder, from any HF Trainer output folder (``checkpoint-N/``
with ``trainer_state.json``, e.g. a SakanaAI/DroPE run; :func:`checkpoint_points`) or from a list of
folders. :func:`track` loads each checkpoint in turn, runs the chosen metric groups (:func:`measure`,
which the training callback :class:`~drope_lens.track.callback.TrackCallback` also runs on the weights
being trained) with drope_lens's own analyses (nothing is re-implemented here) and returns a :class:`TrackResult` whose
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

import dataclasses
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
    tokenizer: Optional[str] = None  # where the tokenizer comes from when the folder has none


def checkpoint_points(
    paths: Sequence[Union[str, os.PathLike]],
    *,
    include_rope: bool = True,
    rope: Optional[str] = None,
    tokenizer: Optional[str] = None,
    tokens_per_step: Optional[int] = None,
) -> list[TrackPoint]:
    """Expand folders into :class:`TrackPoint` s.

    * a drope_lens recalibration run folder gives its RoPE source (if ``include_rope``) and every
      finished checkpoint;
    * any other HF Trainer output folder (``checkpoint-N/`` model folders, e.g. a SakanaAI/DroPE run)
      gives every checkpoint, ``rope`` (if given and ``include_rope``) as the reference; tokens seen
      come from each ``trainer_state.json`` (``num_input_tokens_seen``) or ``step × tokens_per_step``
      (:func:`~drope_lens.loading.drope_format.tokens_seen`);
    * a checkpoint folder gives itself (step and tokens from drope_lens's metadata or its
      ``trainer_state.json``); any other model folder is measured as given (role from its config).

    A folder without tokenizer files uses ``tokenizer``, else ``rope``, else the run's RoPE source."""
    from drope_lens.loading import drope_format as fmt

    points: list[TrackPoint] = []
    for raw in paths:
        p = Path(raw).expanduser()
        if not p.is_dir():
            raise DropeLensInputError(f"{raw}: not a folder (give checkpoint folders or a recalibration run folder)")
        run = fmt.read_run(p)
        if run is not None:
            held = str(p / fmt.HELDOUT_FILE) if (p / fmt.HELDOUT_FILE).is_file() else None
            tok = tokenizer or rope or run["source"]
            if include_rope:
                points.append(TrackPoint("rope", rope or run["source"], "rope", heldout=held))
            for c in fmt.list_checkpoints(p):
                m = fmt.checkpoint_meta(c)
                points.append(TrackPoint(c.name, str(c), "drope", m["step"], m["tokens"], held, _tok(c, tok)))
            continue
        if fmt.is_trainer_run(p):
            if include_rope and rope is not None:
                points.append(TrackPoint("rope", str(rope), "rope"))
            points += [_checkpoint_point(c, tokenizer or rope, tokens_per_step) for c in fmt.trainer_checkpoints(p)]
            continue
        if not (p / "config.json").is_file():
            raise DropeLensInputError(
                f"{raw}: no config.json and no checkpoint-N/ folders; not a model folder, a recalibration run "
                "or an HF Trainer output folder"
            )
        points.append(_checkpoint_point(p, tokenizer or rope, tokens_per_step))
    names = [pt.name for pt in points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DropeLensInputError(f"two checkpoints share the name(s) {dup}; track one run folder at a time")
    if not points:
        raise DropeLensInputError("no checkpoints to track")
    return points


def _tok(folder: Path, fallback: Optional[str]) -> Optional[str]:
    """``fallback`` when ``folder`` has no tokenizer files, else None (the folder's own)."""
    from drope_lens.loading.source import TOKENIZER_FILES

    return None if any((folder / f).exists() for f in TOKENIZER_FILES) else fallback


def _checkpoint_point(folder: Path, tokenizer: Optional[str], tokens_per_step: Optional[int]) -> TrackPoint:
    from drope_lens.loading import drope_format as fmt

    if not fmt.has_weights(folder):
        raise DropeLensInputError(
            f"{folder}: no model weights (*.safetensors / pytorch_model*.bin). A DeepSpeed ZeRO-3 checkpoint "
            "saved without zero3_save_16bit_model holds only its shards: consolidate it with its "
            "zero_to_fp32.py first"
        )
    raw = fmt.read_json(folder / "config.json") or {}
    role = "drope" if fmt.drope_facts(raw)[0] is not None else "rope"
    tok = _tok(folder, tokenizer)
    if tok is None and _tok(folder, "?") is not None:
        raise DropeLensInputError(
            f"{folder}: no tokenizer files; pass --tokenizer (a folder or hub id), or --rope with the RoPE "
            "model the run started from"
        )
    meta = fmt.read_meta(folder)
    heldout = None
    if meta is not None and meta.get("heldout"):
        held = (folder / meta["heldout"]).resolve()
        heldout = str(held) if held.is_file() else None
    step, tokens = fmt.tokens_seen(folder, tokens_per_step)
    if step is not None and tokens is None:
        raise DropeLensInputError(
            f"{folder}: its trainer_state.json does not record the tokens seen (the run did not set "
            "include_num_input_tokens_seen); give the run's tokens per step with --global-batch and --seq-len"
        )
    return TrackPoint(folder.name, str(folder), role, step, tokens, heldout, tok)


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

    @classmethod
    def from_dict(cls, d: dict) -> "TrackResult":
        """The result :meth:`to_dict` wrote (per-group results rebuilt from its rows)."""
        fields = {f.name for f in dataclasses.fields(TrackPoint)}
        points = [TrackPoint(**{k: v for k, v in c.items() if k in fields}) for c in d.get("checkpoints", [])]
        values: dict[str, dict[str, dict[str, Any]]] = {}
        for r in d.get("rows", []):
            res = values.setdefault(r["checkpoint"], {}).setdefault(r["group"], {"scalars": {}, "layers": {}})
            res["scalars"][r["metric"]] = r["value"]
            if r.get("layers") is not None:
                res["layers"][r["metric"]] = r["layers"]
        return cls(points, tuple(d.get("metrics", ())), values, dict(d.get("options") or {}), float(d.get("wall_s", 0)))

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
    tokenizer = None
    if pt.tokenizer is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(pt.tokenizer)
    return load_hooked(pt.path, dtype=dtype, device=device, model_name=name, tokenizer=tokenizer, quantize=quantize)


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


def measure(
    model: Any,
    point: TrackPoint,
    metrics: Sequence[str],
    sizes: TrackSizes,
    texts: Sequence[str],
    *,
    store: Any = None,
    keyed: Optional[dict] = None,
    force: bool = False,
) -> dict[str, dict]:
    """The metric groups of one loaded model (a drope_lens ``HookedTransformer``): ``{group: result}``
    with each result's ``scalars`` (and per-layer ``layers``). With a :class:`~drope_lens.runs.store.PartStore`
    ``store``, each group is reused when saved under the same options (``keyed``) and model identity,
    and saved when computed. What :func:`track` runs per checkpoint, and the training callback
    (:class:`~drope_lens.track.callback.TrackCallback`) on the weights being trained."""
    from drope_lens.runs.provenance import model_identity

    keyed = keyed if keyed is not None else sizes.to_dict()
    ident = model_identity(model) if store is not None else None
    got: dict[str, dict] = {}
    profile = None
    for group in metrics:
        step = f"{point.name}.{group}"
        opts = {"group": group, **keyed, "heldout": point.heldout if group == "ppl" else None}
        if store is not None and not force:
            saved = store.load(step, opts, ident)
            if saved is not None:
                got[group] = saved
                continue
        g0 = time.perf_counter()
        if group == "ppl":
            from drope_lens.analysis.perplexity import perplexity

            data, what = _heldout(point, sizes.heldout_blocks)
            ppl = perplexity(model, data, max_length=None if point.heldout else sizes.max_length)
            res = {"scalars": {"ppl_heldout": ppl.ppl}, "on": what, "n_targets": ppl.n_targets}
        elif group == "massive":
            res = _massive(model, texts, sizes.max_length)
        elif group in ("sinks", "bos"):
            if profile is None:
                from drope_lens.analysis.profile_pass import phase_profile

                profile = phase_profile(model, texts, max_length=sizes.max_length)
            res = _phase(profile, group)
        elif group == "disruption":
            res = _disruption(model, texts, sizes.max_length, sizes.n_seeds)
        else:
            res = _passkey(model, sizes.passkey_n, sizes.passkey_length)
        res["seconds"] = round(time.perf_counter() - g0, 2)
        if store is not None:
            store.save(step, opts, res, res["seconds"], ident)
        got[group] = res
    return got


def track_keys(sizes: TrackSizes, texts: Sequence[str]) -> dict:
    """What saved parts are keyed on besides the group: the sizes and the analysis texts."""
    from drope_lens.runs.store import fingerprint

    return {**sizes.sizes().to_dict(), "n_texts": len(texts), "texts_hash": fingerprint({"texts": list(texts)})}


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
    rope: Optional[str] = None,
    tokenizer: Optional[str] = None,
    tokens_per_step: Optional[int] = None,
    quantize: Optional[str] = None,
    **overrides: Any,
) -> TrackResult:
    """Run the metric groups on every checkpoint (see the module docstring); resumable with ``out``.

    ``checkpoints``: folders -- a recalibration run folder (RoPE source + all checkpoints, unless
    ``include_rope=False``), any HF Trainer output folder (``checkpoint-N/``; ``rope`` is its reference
    if given), checkpoint or model folders -- or :class:`TrackPoint` s; ``rope``, ``tokenizer`` and
    ``tokens_per_step`` as in :func:`checkpoint_points`. ``options``:
    :class:`~drope_lens.options.TrackOptions` (``metrics``, the :class:`TrackSizes`,
    ``include_rope``); ``metrics`` and keywords (``max_length=``, ``n_seeds=``, ...) override its
    fields. ``texts``: texts for massive/sinks/bos/disruption (default: the 15 built-in texts), cut
    at ``max_length`` tokens. ``quantize``: load every checkpoint quantized (``"nf4"``, ``"fp4"``, ``"int8"``;
    bridge backend, see :func:`~drope_lens.loading.load.load_hooked`); saved parts key on it.
    """
    o = TrackOptions.resolve(options, {**overrides, **({} if metrics is None else {"metrics": metrics})})
    points = [c for c in checkpoints if isinstance(c, TrackPoint)]
    folders = [c for c in checkpoints if not isinstance(c, TrackPoint)]
    if folders:
        points += checkpoint_points(
            folders, include_rope=o.include_rope, rope=rope, tokenizer=tokenizer, tokens_per_step=tokens_per_step
        )
    if not points:
        raise DropeLensInputError("no checkpoints to track")
    from drope_lens.data.texts import builtin_texts
    from drope_lens.runs.store import PartStore

    texts = list(texts) if texts is not None else builtin_texts()
    keyed = track_keys(o, texts)
    store = PartStore(Path(out)) if out is not None else None
    result = TrackResult(points, o.metrics, options=keyed)
    t0 = time.perf_counter()
    for i, pt in enumerate(points):
        if progress:
            what = "RoPE reference" if pt.tokens is None else f"{pt.tokens:,} tokens"
            print(f"[track {i + 1}/{len(points)}] {pt.name} ({what})", file=sys.stderr, flush=True)
        model = _load(pt, dtype, device, quantize)
        result.values[pt.name] = measure(model, pt, o.metrics, o, texts, store=store, keyed=keyed, force=force)
        del model
    result.wall_s = time.perf_counter() - t0
    return result
