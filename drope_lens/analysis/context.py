"""The context-length experiment (STUDY_SPEC §9, Exp 10): what changes as the input grows.

For each length ``L`` of a list, :func:`context_experiment` measures on one model:

* **passkey accuracy** at several needle depths (``drope_lens.tasks.passkey`` prompts of exactly
  ``L`` tokens, greedy decoding with the KV cache, drope_lens's exact-match rule);
* on one long text of ``L`` tokens (the built-in texts in a seeded order, then seeded passkey
  filler sentences until ``L``; or your own ``texts``): **perplexity** (T−1 targets, BOS never a
  target), **sink rate** (share of heads with sink score ≥ τ, mean over layers, streamed sink
  scores), Gu's **Sink^ε**, the **BOS ratio** (max over layers of ‖x₀‖ / mean ‖xₜ‖) and the
  **massive Q/K counts** (Jin et al.'s λ = 5 rule on that text, summed over layers).

Everything is seeded (passkey keys and filler, the long text). The model's fast attention and the
streamed sink scores keep memory O(L) per layer, so lengths of 8k on a CPU and 32k on a GPU are
in reach. Lengths beyond the model's ``n_ctx`` are refused unless ``beyond_context=True`` (then
``n_ctx`` is raised for the run and restored; TransformerLens extends its rotary tables).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import torch

from drope_lens.loading.backend import Model
from drope_lens.options import ContextOptions
from drope_lens.validation import check_batch_size

DEFAULT_LENGTHS = ContextOptions.default("lengths")
DEFAULT_DEPTHS = ContextOptions.default("depths")
METRICS = ("passkey_accuracy", "ppl", "sink_rate", "gu_sink", "max_bos_ratio", "massive_q", "massive_k")


def training_context(model: Model) -> int:
    """The context length the model was trained for, from its config.

    Llama-3 rope scaling: ``original_max_position_embeddings``; otherwise ``n_ctx``
    (``max_position_embeddings``).
    """
    cfg = model.cfg
    if getattr(cfg, "use_NTK_by_parts_rope", False) and getattr(cfg, "NTK_original_ctx_len", None):
        return int(cfg.NTK_original_ctx_len)
    return int(cfg.n_ctx)


def long_text_tokens(tokenizer, length: int, *, seed: int = 0, texts: Optional[Sequence[str]] = None) -> torch.Tensor:
    """``[1, length]`` ids: BOS + the texts (seeded order; built-in texts by default) joined by
    blank lines, then seeded passkey filler sentences, cut at ``length`` tokens."""
    from drope_lens.data.texts import builtin_texts
    from drope_lens.tasks.passkey import filler_sentences

    rng = random.Random(f"context-{seed}")
    pool = list(texts) if texts is not None else builtin_texts()
    rng.shuffle(pool)
    bos = tokenizer.bos_token_id
    if bos is None:
        raise ValueError("The tokenizer has no BOS token; drope_lens puts BOS at position 0.")
    ids: list[int] = [bos]
    for text in pool:
        ids += tokenizer("\n\n" + text if len(ids) > 1 else text, add_special_tokens=False)["input_ids"]
        if len(ids) >= length:
            break
    filler = filler_sentences()
    while len(ids) < length:
        ids += tokenizer(" " + rng.choice(filler), add_special_tokens=False)["input_ids"]
    return torch.tensor(ids[:length])[None]


@dataclass
class ContextPoint:
    """All metrics at one length."""

    length: int
    passkey_accuracy: float
    passkey_by_depth: dict[float, float]
    passkey_n: int
    ppl: float
    sink_rate: float
    gu_sink: float
    max_bos_ratio: float
    massive_q: float
    massive_k: float
    sink_rate_by_layer: list[float]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["passkey_by_depth"] = {str(k): v for k, v in self.passkey_by_depth.items()}
        return d


@dataclass
class ContextExperiment:
    """:func:`context_experiment` result of one model: one :class:`ContextPoint` per length."""

    model: str
    position_encoding: str
    training_context: int
    points: list[ContextPoint]
    depths: tuple[float, ...]
    n_per_depth: int
    seed: int
    tau: float
    threshold: float
    attention: str = ""
    wall_s: float = 0.0
    options: dict = field(default_factory=dict)

    @property
    def lengths(self) -> list[int]:
        return [p.length for p in self.points]

    def metric(self, name: str) -> list[float]:
        if name not in METRICS:
            raise ValueError(f"Unknown metric {name!r}; choose one of {METRICS}.")
        return [getattr(p, name) for p in self.points]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "position_encoding": self.position_encoding,
            "training_context": self.training_context,
            "depths": list(self.depths),
            "n_per_depth": self.n_per_depth,
            "seed": self.seed,
            "tau": self.tau,
            "threshold": self.threshold,
            "attention": self.attention,
            "wall_s": round(self.wall_s, 3),
            "options": dict(self.options),
            "points": [p.to_dict() for p in self.points],
        }

    def to_dataframe(self):
        """One row per length: every scalar metric plus passkey accuracy per depth."""
        import pandas as pd

        rows = []
        for p in self.points:
            row = {"model": self.model, "position_encoding": self.position_encoding, "length": p.length}
            row.update({m: getattr(p, m) for m in METRICS})
            row.update({f"passkey_depth_{d:g}": a for d, a in p.passkey_by_depth.items()})
            row["seconds"] = p.seconds
            rows.append(row)
        return pd.DataFrame(rows)

    def summary(self) -> str:
        lines = [f"{self.model} ({self.position_encoding}; trained to {self.training_context} tokens)"]
        for p in self.points:
            lines.append(
                f"  L={p.length:>6}: passkey {p.passkey_accuracy:.2f}  ppl {p.ppl:.3g}  "
                f"sink rate {p.sink_rate:.3f}  BOS ratio {p.max_bos_ratio:.3g}  "
                f"massive Q/K {p.massive_q:.0f}/{p.massive_k:.0f}"
            )
        return "\n".join(lines)


def check_lengths(lengths: Sequence[int], depths: Sequence[float], n_per_depth: int) -> tuple[list[int], list[float]]:
    """Validate the options before any model work (clear messages; :class:`~drope_lens.options.ContextOptions`)."""
    # any sequence: ContextOptions validates it and stores a tuple
    opts = ContextOptions(lengths=lengths, depths=depths, n_per_depth=n_per_depth)  # type: ignore[arg-type]
    return list(opts.lengths), list(opts.depths)


def _passkey(model, length: int, depths: Sequence[float], n: int, seed: int, batch_size: int):
    from drope_lens.loading import encode
    from drope_lens.tasks import parsing
    from drope_lens.tasks.passkey import build_prompt, make_keys
    from drope_lens.tasks.runner import PASSKEY_MAX_NEW_TOKENS
    from drope_lens.tasks.scoring import greedy_generate_batch

    tok = model.tokenizer
    by_depth: dict[float, float] = {}
    for d in depths:
        keys = make_keys(n, seed * 1_000_003 + length * 101 + int(round(d * 1000)))
        items = [
            build_prompt(tok, key, length, d, random.Random(f"context-passkey-{seed}-{length}-{d}-{i}"), n_ctx=None)
            for i, key in enumerate(keys)
        ]
        batch = encode(tok, [it.text for it in items])
        correct = 0
        for idx, sub in batch.batches(batch_size):

            def stop(r, s, idx=idx, items=items):
                return parsing.passkey_done(s, len(items[idx[r]].answer))

            gen = greedy_generate_batch(
                model, sub.tokens.to(model.cfg.device), PASSKEY_MAX_NEW_TOKENS, lengths=sub.lengths, stop=stop
            )
            for i, (_, text) in zip(idx, gen, strict=True):
                correct += bool(parsing.passkey_exact(text, items[i].answer))
        by_depth[d] = correct / n
    return by_depth


@torch.no_grad()
def context_experiment(
    model: Model,
    lengths: Optional[Sequence[int]] = None,
    options: Optional[ContextOptions] = None,
    *,
    texts: Optional[Sequence[str]] = None,
    batch_size: int = 4,
    progress: bool = False,
    log: Optional[Callable[[str], None]] = None,
    **overrides,
) -> ContextExperiment:
    """Passkey accuracy, perplexity, sink rate, BOS ratio and massive Q/K counts per length.

    Args:
        lengths: token counts (BOS included), each ≥ 64; sorted ascending in the result (default:
            ``options.lengths``).
        options: :class:`~drope_lens.options.ContextOptions` (``depths``, ``n_per_depth``, ``seed``,
            ``tau``, ``gu_eps``, ``threshold``, ``beyond_context``); keyword arguments override its
            fields. ``n_per_depth`` prompts per needle depth (0 skips the passkey; accuracy is then
            NaN); ``beyond_context`` allows lengths above ``model.cfg.n_ctx`` (raised for the run,
            then restored).
        texts: the long texts to measure perplexity/sinks on (default: the built-in texts + filler).
        log: called with a one-line summary after each length (e.g. ``print``).
    """
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.analysis.profile_pass import measure
    from drope_lens.loading.forward import model_label
    from drope_lens.loading.surface import attention_path
    from drope_lens.loading.tokens import TokenBatch

    o = ContextOptions.resolve(options, {**overrides, **({} if lengths is None else {"lengths": lengths})})
    lengths, depths = list(o.lengths), list(o.depths)
    n_per_depth, seed, tau, gu_eps, threshold = o.n_per_depth, o.seed, o.tau, o.gu_eps, o.threshold
    beyond_context = o.beyond_context
    check_batch_size(batch_size)
    n_ctx = int(model.cfg.n_ctx)
    if max(lengths) > n_ctx and not beyond_context:
        raise ValueError(
            f"length {max(lengths)} is beyond the model's n_ctx={n_ctx}; pass "
            "beyond_context=True (--beyond-context) to run past the training context."
        )
    t0 = time.perf_counter()
    points: list[ContextPoint] = []
    old_ctx = model.cfg.n_ctx
    model.cfg.n_ctx = max(n_ctx, max(lengths))
    try:
        it = lengths
        if progress:
            from drope_lens.progress import progress_bar

            it = progress_bar(lengths, what="context", model=model)
        for length in it:
            t1 = time.perf_counter()
            by_depth = (
                _passkey(model, length, depths, n_per_depth, seed, batch_size)
                if n_per_depth
                else {d: float("nan") for d in depths}
            )
            ids = long_text_tokens(model.tokenizer, length, seed=seed, texts=texts)
            batch = TokenBatch(ids, torch.tensor([ids.shape[1]]))
            prof, ppl = measure(model, batch, profile=True, ppl=True, batch_size=1, tau=tau, gu_eps=gu_eps)
            mv = detect_massive(model, batch, threshold=threshold, tensors=("q", "k"), batch_size=1)
            assert prof is not None and ppl is not None  # measure(profile=True, ppl=True)
            st, s = prof.layer_stats(), prof.summary()
            acc = (sum(by_depth.values()) / len(by_depth)) if n_per_depth else float("nan")
            points.append(
                ContextPoint(
                    length=length,
                    passkey_accuracy=acc,
                    passkey_by_depth=by_depth,
                    passkey_n=n_per_depth * len(depths),
                    ppl=float(ppl.ppl),
                    sink_rate=s["mean_sink_rate"],
                    gu_sink=s["gu_sink"],
                    max_bos_ratio=s["max_bos_ratio"],
                    massive_q=mv.total_mean("q"),
                    massive_k=mv.total_mean("k"),
                    sink_rate_by_layer=[float(x) for x in st["sink_rate"]],
                    seconds=time.perf_counter() - t1,
                )
            )
            if log is not None:
                p = points[-1]
                log(
                    f"[context] {model_label(model)} L={length}: passkey {p.passkey_accuracy:.2f}, "
                    f"ppl {p.ppl:.4g}, sink rate {p.sink_rate:.3f}, {p.seconds:.0f} s"
                )
    finally:
        model.cfg.n_ctx = old_ctx
    return ContextExperiment(
        model=model_label(model),
        position_encoding=str(getattr(model.cfg, "position_encoding", "rope")),
        training_context=training_context(model),
        points=points,
        depths=tuple(depths),
        n_per_depth=int(n_per_depth),
        seed=seed,
        tau=tau,
        threshold=threshold,
        attention=attention_path(model),
        wall_s=time.perf_counter() - t0,
        options={
            "gu_eps": gu_eps,
            "batch_size": batch_size,
            "beyond_context": beyond_context,
            "texts": "builtin+filler" if texts is None else f"{len(texts)} given",
        },
    )


@dataclass
class ContextComparison:
    """Both models of a pair on the same lengths."""

    rope: ContextExperiment
    drope: ContextExperiment

    def to_dict(self) -> dict[str, Any]:
        return {"rope": self.rope.to_dict(), "drope": self.drope.to_dict()}

    def to_dataframe(self):
        import pandas as pd

        a, b = self.rope.to_dataframe(), self.drope.to_dataframe()
        a.insert(0, "role", "rope")
        b.insert(0, "role", "drope")
        return pd.concat([a, b], ignore_index=True)

    def summary(self) -> str:
        return self.rope.summary() + "\n" + self.drope.summary()


def pair_context_experiment(
    pair, lengths: Optional[Sequence[int]] = None, options: Optional[ContextOptions] = None, **kwargs
) -> ContextComparison:
    """:func:`context_experiment` on both models of a :class:`~drope_lens.loading.pair.ModelPair`."""
    fields = {k: kwargs.pop(k) for k in list(kwargs) if k in ContextOptions.__dataclass_fields__}
    o = ContextOptions.resolve(options, {**fields, **({} if lengths is None else {"lengths": lengths})})
    return ContextComparison(
        rope=context_experiment(pair.rope, options=o, **kwargs),
        drope=context_experiment(pair.drope, options=o, **kwargs),
    )
