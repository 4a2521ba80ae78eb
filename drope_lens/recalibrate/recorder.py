"""What a recalibration run writes besides the Trainer's own files: a ``TrainerCallback``.

* step 0: ``checkpoint-0`` (the untrained zero-shot NoPE model, saved through the Trainer so every
  distributed backend gathers it) at the start of a fresh run;
* every checkpoint the Trainer saves: ``drope_lens_recalibration.json`` (step, tokens seen, label,
  recipe, world size, global batch), written last, and the optimizer state of older checkpoints
  dropped (:func:`~drope_lens.recalibrate.checkpoint.drop_resume_state`);
* every optimizer step: one JSON line in ``train_log.jsonl`` (step, tokens, loss, LR, gradient norm,
  tokens/s, wall seconds) and the progress bar (tokens/s, loss, LR);
* ``stop_after``: stop, with a checkpoint, after that many steps in total (as an interruption would).

Only the main process writes (``state.is_world_process_zero``). Tokens/s leave out the time a
:class:`~drope_lens.track.callback.TrackCallback` spent measuring.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from transformers import TrainerCallback

from drope_lens.loading import drope_format as fmt
from drope_lens.recalibrate.checkpoint import drop_resume_state
from drope_lens.recalibrate.recipe import Recipe

LOG_FILE = "train_log.jsonl"


class RunRecorder(TrainerCallback):
    def __init__(
        self,
        run_dir: Path,
        recipe: Recipe,
        source: str,
        *,
        progress: bool = True,
        stop_after: Optional[int] = None,
        pauses: Any = None,
    ):
        self.run_dir, self.recipe, self.source = Path(run_dir), recipe, source
        self.progress, self.stop_after = progress, stop_after
        self.pauses = pauses  # an object with a ``seconds`` attribute: time not spent training
        self.trainer: Any = None  # set once the Trainer exists (step 0 is saved through it)
        self.losses: list[float] = []
        self.start_step = 0
        self.train_s = 0.0
        self._t0 = 0.0
        self._loss: Optional[float] = None
        self._bar: Any = None

    def _paused(self) -> float:
        return float(getattr(self.pauses, "seconds", 0.0) or 0.0)

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0 - self._paused()

    def tokens_per_s(self, step: int) -> float:
        done = (step - self.start_step) * self.recipe.tokens_per_step
        return done / max(self._elapsed(), 1e-9) if done else float("nan")

    def meta(self, step: int, loss: Optional[float]) -> dict:
        from drope_lens import __version__

        tokens = step * self.recipe.tokens_per_step
        return {
            "step": step,
            "tokens": tokens,
            "label": fmt.recalibration_label(tokens),
            "recipe": self.recipe.to_dict(),
            "recipe_label": self.recipe.describe(),
            "source": self.source,
            "variant": self.recipe.variant,
            "loss": loss,
            "world_size": self.recipe.world_size,
            "global_batch": self.recipe.global_batch,
            "tokens_per_step": self.recipe.tokens_per_step,
            "run_dir": "..",
            "heldout": f"../{fmt.HELDOUT_FILE}",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "drope_lens": __version__,
        }

    def on_train_begin(self, args, state, control, **kwargs):
        self.start_step = state.global_step
        zero = self.run_dir / f"{fmt.CHECKPOINT_PREFIX}0"
        if state.global_step == 0 and fmt.read_meta(zero) is None:
            self.trainer.save_model(str(zero))  # every process: FSDP / ZeRO-3 gather the weights
            if state.is_world_process_zero:
                fmt.write_meta(zero, self.meta(0, None))
        if state.is_world_process_zero:
            _trim_log(self.run_dir / LOG_FILE, state.global_step)
            if self.progress:
                from tqdm.auto import tqdm

                self._bar = tqdm(
                    total=state.max_steps,
                    initial=state.global_step,
                    desc="recalibrate",
                    unit="step",
                    dynamic_ncols=True,
                )
        self._t0 = time.perf_counter() - self._paused()

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop_after is not None and state.global_step >= self.stop_after:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        step = state.global_step
        self._loss = float(logs["loss"])
        self.losses.append(self._loss)
        if not state.is_world_process_zero:
            return
        tps = self.tokens_per_s(step)
        line = {
            "step": step,
            "tokens": step * self.recipe.tokens_per_step,
            "loss": self._loss,
            "lr": logs.get("learning_rate"),
            "grad_norm": logs.get("grad_norm"),
            "tokens_per_s": round(tps, 2),
            "wall_s": round(self._elapsed(), 2),
        }
        with open(self.run_dir / LOG_FILE, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(line) + "\n")
        if self._bar is not None:
            self._bar.update(step - self._bar.n)
            self._bar.set_postfix(loss=f"{self._loss:.3f}", lr=f"{line['lr']:.2e}", tok_s=f"{tps:.0f}")

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        folder = self.run_dir / f"{fmt.CHECKPOINT_PREFIX}{state.global_step}"
        if not fmt.has_weights(folder):
            raise RuntimeError(
                f"{folder} holds no consolidated weights. Under FSDP set fsdp_state_dict_type: FULL_STATE_DICT, "
                "under DeepSpeed ZeRO-3 zero3_save_16bit_model: true (see examples/accelerate/)"
            )
        fmt.write_meta(folder, self.meta(state.global_step, self._loss))
        drop_resume_state(self.run_dir, keep_step=state.global_step)

    def on_train_end(self, args, state, control, **kwargs):
        self.train_s = self._elapsed()
        if self._bar is not None:
            self._bar.close()


def _trim_log(path: Path, upto_step: int) -> None:
    """Drop the log lines past ``upto_step`` (a resumed run writes them again)."""
    if not path.exists():
        return
    from drope_lens.atomic import atomic_write_text

    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= upto_step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))
