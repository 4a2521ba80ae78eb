"""Track metrics while a DroPE model trains: an HF ``TrainerCallback``, so curves come without a second pass.

Every ``every`` optimizer steps (and at step 0 and the last step) the weights being trained are
copied, in memory, into a drope_lens model (identity rotation, the q/k norms and
``softmax_scale`` of the model's DroPE config) on the main process, and :func:`~drope_lens.track.pipeline.measure`
runs the chosen metric groups on it -- the same analyses and the same row format as ``drope-lens track``.
Rows are rewritten atomically after each measurement to ``<output_dir>/track/during_training.json``
(:meth:`~drope_lens.track.pipeline.TrackResult.to_dict`: ``checkpoints``, ``rows``), and the figure
of :func:`~drope_lens.views.track_figure.plot_track` is saved beside it when training ends. A resumed
run keeps the rows up to its resume step.

Under DDP the main process's replica holds the full weights; under FSDP or DeepSpeed ZeRO-3 every
process joins one gather of the full state dict (pass ``trainer=`` so the callback can reach its
accelerator; ZeRO-3 needs ``zero3_save_16bit_model: true``). The other processes wait at their next
collective while the main one measures, so keep ``ddp_timeout`` above one measurement's time.

Use it in any HF Trainer run (SakanaAI/DroPE's ``train.py`` too)::

    trainer.add_callback(TrackCallback(every=500, metrics="ppl,massive", trainer=trainer,
                                       tokens_per_step=global_batch * seq_len))
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from transformers import TrainerCallback

from drope_lens.options import TrackOptions
from drope_lens.track.pipeline import TrackPoint, TrackResult, measure, track_keys

OUT_NAME = "during_training.json"


def hooked_from_weights(config: Any, state_dict: dict, tokenizer: Any, *, device: Any = "cpu", origin: str = ""):
    """A drope_lens model (default backend; float32, NoPE) of a DroPE Llama's config and full state dict,
    built without writing to disk: the HF Llama skeleton is made on the meta device and takes the
    tensors as they are; the q/k norm gains and ``softmax_scale`` come from the config."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from drope_lens.loading import hooked_from_hf
    from drope_lens.loading.drope_format import NORM_SIDES, drope_facts

    raw = config.to_dict()
    attention_type, scale = drope_facts(raw)
    attention_type = attention_type or "nope"
    clean = {k: v for k, v in raw.items() if k not in ("model_type", "architectures", "auto_map", "attention_type")}
    clean.pop("softmax_scale", None)
    with torch.device("meta"):
        skeleton = LlamaForCausalLM(LlamaConfig(**clean))
    norms = {k: v for k, v in state_dict.items() if k.endswith(("q_norm.weight", "k_norm.weight"))}
    weights = {k: v for k, v in state_dict.items() if k not in norms}
    if "lm_head.weight" not in weights and skeleton.config.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    missing, unexpected = skeleton.load_state_dict(weights, strict=False, assign=True)
    missing = [k for k in missing if "rotary" not in k]
    if missing or unexpected:
        raise RuntimeError(f"weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    # the rotary tables are buffers, not weights: built for real (a bridge moves the whole module)
    skeleton.model.rotary_emb = type(skeleton.model.rotary_emb)(config=skeleton.config)
    n = skeleton.config.num_hidden_layers
    sides = NORM_SIDES[attention_type]
    gains = {s: [norms[f"model.layers.{i}.self_attn.{s}_norm.weight"] for i in range(n)] for s in sides}
    return hooked_from_hf(
        skeleton,
        tokenizer,
        position_encoding="nope",
        nope_origin=origin or None,
        dtype=torch.float32,
        device=device,
        drope_attention_type=attention_type,
        softmax_scale=scale,
        q_norms=gains.get("q"),
        k_norms=gains.get("k"),
        source="in-memory (training)",
    )


class TrackCallback(TrainerCallback):
    """Measure ``metrics`` (see :data:`~drope_lens.options.METRIC_GROUPS`) every ``every`` steps.

    ``tokenizer``: default the Trainer's ``processing_class``. ``heldout``: a ``heldout.safetensors``
    (``tokens``) for ``ppl`` (default: the built-in eval texts). ``rope``: the RoPE model the run
    started from, measured once as the reference. ``tokens_per_step``: global batch × sequence length
    (default: the Trainer's ``num_input_tokens_seen``). ``out``: the rows file (default
    ``<output_dir>/track/during_training.json``). ``options``: :class:`~drope_lens.options.TrackOptions`
    sizes (``metrics`` overrides its list). ``device``: where the measured copy lives (default the
    training device)."""

    def __init__(
        self,
        every: int,
        metrics: Union[str, Sequence[str], None] = None,
        *,
        options: Optional[TrackOptions] = None,
        tokenizer: Any = None,
        heldout: Optional[str] = None,
        rope: Optional[str] = None,
        tokens_per_step: Optional[int] = None,
        out: Union[str, os.PathLike, None] = None,
        trainer: Any = None,
        device: Optional[str] = None,
        texts: Optional[Sequence[str]] = None,
        progress: bool = True,
    ):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        self.every = every
        self.options = TrackOptions.resolve(options, {} if metrics is None else {"metrics": metrics})
        self.tokenizer, self.heldout, self.rope = tokenizer, heldout, rope
        self.tokens_per_step, self.trainer, self.device = tokens_per_step, trainer, device
        self.out = Path(out) if out is not None else None
        self._texts = list(texts) if texts is not None else None
        self.progress = progress
        self.result: Optional[TrackResult] = None
        self.seconds = 0.0  # time spent measuring (the recorder leaves it out of tokens/s)
        self._last = -1

    # --- the weights ------------------------------------------------------------------------------

    def _sharded(self) -> bool:
        t = self.trainer
        return t is not None and bool(getattr(t, "is_deepspeed_enabled", False) or getattr(t, "is_fsdp_enabled", False))

    def _weights(self, model: Any, is_main: bool) -> tuple[Any, Optional[dict]]:
        """``(config, full state dict)``; the state dict is None off the main process. Sharded models
        gather on every process (a collective)."""
        t = self.trainer
        if self._sharded():
            sd = t.accelerator.get_state_dict(t.model_wrapped)
            unwrapped = t.accelerator.unwrap_model(t.model)
        else:
            unwrapped = t.accelerator.unwrap_model(model) if t is not None else getattr(model, "module", model)
            sd = unwrapped.state_dict() if is_main else None
        return unwrapped.config, (sd if is_main else None)

    # --- the rows ---------------------------------------------------------------------------------

    def _path(self, args: Any) -> Path:
        return self.out if self.out is not None else Path(args.output_dir) / "track" / OUT_NAME

    def _texts_list(self) -> list[str]:
        if self._texts is None:
            from drope_lens.data.texts import builtin_texts

            self._texts = builtin_texts()
        return self._texts

    def _save(self, args: Any) -> None:
        from drope_lens.jsonio import atomic_write_json

        assert self.result is not None
        payload = {**self.result.to_dict(), "every": self.every}
        atomic_write_json(self._path(args), payload)

    def _tokens(self, state: Any) -> int:
        if self.tokens_per_step:
            return int(state.global_step) * int(self.tokens_per_step)
        return int(state.num_input_tokens_seen or 0)

    def _measure(self, args: Any, point: TrackPoint, loaded: Any) -> None:
        """Main process: the metric groups of ``loaded``, recorded under ``point`` and saved."""
        assert self.result is not None
        if self.progress:
            what = "RoPE reference" if point.role == "rope" else f"step {point.step}, {point.tokens:,} tokens"
            print(f"[track during training] {what}", file=sys.stderr, flush=True)
        texts = self._texts_list()
        with _rng_kept(args.device):
            got = measure(
                loaded, point, self.options.metrics, self.options, texts, keyed=track_keys(self.options, texts)
            )
        self.result.points = [p for p in self.result.points if p.name != point.name] + [point]
        self.result.values[point.name] = got
        self._save(args)

    def _measure_training(self, args: Any, state: Any, model: Any, tokenizer: Any) -> None:
        """The weights being trained, at ``state.global_step`` (once per step; every process calls it)."""
        if state.global_step == self._last:
            return
        self._last = state.global_step
        t0 = time.perf_counter()
        config, sd = self._weights(model, state.is_world_process_zero)
        if state.is_world_process_zero:
            from drope_lens.loading.drope_format import recalibration_label

            assert sd is not None
            tokens = self._tokens(state)
            point = TrackPoint(
                f"step-{state.global_step}", "in-memory", "drope", state.global_step, tokens, self.heldout
            )
            origin = f"{recalibration_label(tokens)} (in training, step {state.global_step})"
            loaded = hooked_from_weights(
                config,
                sd,
                self.tokenizer if self.tokenizer is not None else tokenizer,
                device=self.device or args.device,
                origin=origin,
            )
            del sd
            self._measure(args, point, loaded)
            del loaded
        self.seconds += time.perf_counter() - t0

    # --- the events -------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        if getattr(self.trainer, "is_deepspeed_enabled", False):
            plugin = self.trainer.accelerator.state.deepspeed_plugin
            if plugin.zero_stage == 3 and not plugin.zero3_save_16bit_model:
                raise ValueError("tracking under DeepSpeed ZeRO-3 needs zero3_save_16bit_model: true in the config")
        t0 = time.perf_counter()
        if state.is_world_process_zero:
            from drope_lens.loading.drope_format import read_json

            saved = read_json(self._path(args))
            res = TrackResult.from_dict(saved) if saved else TrackResult([], self.options.metrics)
            keep = [p for p in res.points if p.role == "rope" or (p.step or 0) <= state.global_step]
            texts = self._texts_list()
            self.result = TrackResult(
                keep,
                self.options.metrics,
                {p.name: res.values.get(p.name, {}) for p in keep},
                track_keys(self.options, texts),
            )
            if self.rope is not None and not any(p.role == "rope" for p in keep):
                from drope_lens.track.pipeline import _load

                ref = TrackPoint("rope", str(self.rope), "rope", heldout=self.heldout)
                self._measure(args, ref, _load(ref, torch.float32, self.device or args.device))
            self._save(args)
        self.seconds += time.perf_counter() - t0
        if state.global_step == 0:
            self._measure_training(args, state, model, processing_class)
        self._last = state.global_step

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        if state.global_step % self.every == 0:
            self._measure_training(args, state, model, processing_class)

    def on_train_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._measure_training(args, state, model, processing_class)  # the last step, if not measured yet
        if state.is_world_process_zero and self.result is not None and self.result.rows():
            from drope_lens.views.figures import save_figure
            from drope_lens.views.track_figure import plot_track

            try:
                fig = plot_track(self.result)
            except ValueError:  # none of the plotted metrics was measured
                return
            save_figure(fig, str(self._path(args).with_suffix(".png")))


class _rng_kept:
    """Run a block without moving the Python, NumPy or torch (CPU and device) random state."""

    def __init__(self, device: Any):
        self.device = torch.device(device)

    def __enter__(self):
        import numpy as np

        self._py, self._np = random.getstate(), np.random.get_state()
        self._fork = torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else [])
        self._fork.__enter__()

    def __exit__(self, *exc):
        import numpy as np

        self._fork.__exit__(*exc)
        random.setstate(self._py)
        np.random.set_state(self._np)
