"""The recalibration recipe: every option of a run, frozen and typed.

The defaults follow SakanaAI/DroPE's configs where they apply (RoPE removed from step 0, all
parameters trained, AdamW β 0.9/0.999, ε 1e-8, weight decay 0, gradient clipping 1.0, warm-up then
constant or cosine LR in 1e-4–3e-4, variants ``nope`` / ``qk_norm_nope``) and are sized for the
embedded SmolLM2-135M on a 2-core CPU: 175 steps of 4 × 256 tokens = 179,200 tokens, ~24 min at
the ~125 tokens/s measured on 2 idle cores, a checkpoint every 25 steps (8 with step 0).
``kl_weight`` (a KL term to the frozen RoPE teacher) is **not part of DroPE's recipe**; it is off
by default.

``batch_size`` is the micro-batch of one process (HF's ``per_device_train_batch_size``); one optimizer
step sees ``batch_size × grad_accum × world_size`` blocks (:attr:`Recipe.global_batch`), where
``world_size`` is the number of training processes (``torchrun`` / ``accelerate launch``), filled in
by :func:`~drope_lens.recalibrate.train.recalibrate` from the launch, never a command-line option.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Optional

from drope_lens.errors import DropeLensInputError

VARIANTS = ("nope", "qk_norm_nope")
SCHEDULES = ("constant", "cosine")
CACHE_PREFIX = "smollm2-135m-instruct-"  # cached runs of the embedded model
DTYPES = ("float32", "bfloat16")  # fp16 would need loss scaling; DroPE trains in bf16
#: HF attention implementations; ``auto``: flash_attention_2 on CUDA in bf16 when flash-attn is installed, else sdpa.
ATTENTIONS = ("auto", "sdpa", "flash_attention_2", "eager")
#: What ``--track-every`` measures during training by default: every track group but the slow ``disruption``.
TRACK_METRICS = "ppl,massive,sinks,bos,passkey"
#: Recipe fields that change how a run is computed but not what it trains on or towards (a resumed run
#: may change them); the global batch (batch x grad-accum x processes) stands for the three batch fields.
LAUNCH_FIELDS = ("save_every", "device", "grad_checkpointing", "attention", "batch_size", "grad_accum", "world_size")


def launch_world_size() -> int:
    """Training processes of this launch (``WORLD_SIZE``, set by torchrun and accelerate launch; 1 alone)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


@dataclass(frozen=True)
class Recipe:
    """Options of one recalibration run (see the module docstring for their provenance).

    ``dtype``: ``float32`` trains in fp32; ``bfloat16`` is HF Trainer's ``bf16`` mixed precision: fp32
    master weights (and optimizer state, and saved checkpoints) with the forward/backward under
    autocast (DroPE trains in bf16). ``float16`` is refused: it would need loss scaling.
    ``device``: ``auto`` (CUDA when this torch sees a GPU, else CPU), ``cpu``, ``cuda``, ``mps``; under
    ``torchrun`` / ``accelerate launch`` each process takes its own GPU.
    ``grad_checkpointing``: HF gradient checkpointing (recompute activations in the backward).
    ``attention``: see :data:`ATTENTIONS`. ``max_tokens`` (if set) overrides ``max_steps`` with
    ``ceil(max_tokens / tokens_per_step)``.
    """

    variant: str = "nope"
    lr: float = 1e-4
    warmup_steps: int = 10
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    seq_len: int = 256
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = 175
    max_tokens: Optional[int] = None
    save_every: int = 25
    heldout_blocks: int = 32
    bos: bool = True
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0
    grad_checkpointing: bool = False
    attention: str = "auto"
    kl_weight: float = 0.0  # NOT part of DroPE's recipe
    kl_temperature: float = 1.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_grad: float = 1.0
    world_size: int = 1  # training processes; set from the launch by recalibrate(), not an option

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise DropeLensInputError(msg)

        if self.variant not in VARIANTS:
            bad(f"--variant must be one of {VARIANTS}, got {self.variant!r}")
        if self.attention not in ATTENTIONS:
            bad(f"--attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.schedule not in SCHEDULES:
            bad(f"--schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.dtype not in DTYPES:
            bad(
                f"--dtype must be one of {DTYPES}, got {self.dtype!r}"
                + (" (fp16 training would need loss scaling; use bfloat16)" if self.dtype == "float16" else "")
            )
        if not (math.isfinite(self.lr) and self.lr > 0):
            bad(f"--lr must be a finite number > 0, got {self.lr}")
        for name, lo in (
            ("seq_len", 2),
            ("batch_size", 1),
            ("grad_accum", 1),
            ("max_steps", 1),
            ("save_every", 1),
            ("heldout_blocks", 1),
            ("warmup_steps", 0),
            ("world_size", 1),
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < lo:
                bad(f"--{name.replace('_', '-')} must be an integer >= {lo}, got {v!r}")
        if self.max_tokens is not None and self.max_tokens < 1:
            bad(f"--max-tokens must be >= 1, got {self.max_tokens}")
        if not (0.0 <= self.min_lr_ratio <= 1.0):
            bad(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not (math.isfinite(self.kl_weight) and self.kl_weight >= 0):
            bad(f"--kl-weight must be >= 0, got {self.kl_weight}")
        if not self.kl_temperature > 0:
            bad(f"--kl-temperature must be > 0, got {self.kl_temperature}")
        if not self.clip_grad > 0:
            bad(f"clip_grad must be > 0, got {self.clip_grad}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    @property
    def global_batch(self) -> int:
        """Blocks per optimizer step, all processes together."""
        return self.batch_size * self.grad_accum * self.world_size

    @property
    def tokens_per_step(self) -> int:
        return self.seq_len * self.global_batch

    @property
    def total_steps(self) -> int:
        if self.max_tokens is not None:
            return max(1, math.ceil(self.max_tokens / self.tokens_per_step))
        return self.max_steps

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based): linear warm-up, then constant
        or cosine down to ``min_lr_ratio * lr`` at the last step."""
        if self.warmup_steps and step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return self.lr
        span = max(1, self.total_steps - self.warmup_steps - 1)
        frac = min(1.0, (step - self.warmup_steps) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {k: (tuple(v) if k == "betas" else v) for k, v in d.items() if k in known}
        return cls(**kwargs)

    def training_identity(self) -> dict:
        """What a resumed run must share with the saved one: every field but the
        :data:`LAUNCH_FIELDS`, and the global batch (so a run may resume with another micro-batch,
        accumulation or number of processes that keep it)."""
        d = {k: v for k, v in self.to_dict().items() if k not in LAUNCH_FIELDS}
        d["global_batch"] = self.global_batch
        return d

    def cache_name(self) -> str:
        """The cache folder of this recipe's run of the embedded model (variant and token budget)."""
        return f"{CACHE_PREFIX}{self.variant}-{self.total_steps * self.tokens_per_step}tok"

    def describe(self) -> str:
        """Short label, e.g. ``nope, lr 1e-04 cosine (warm-up 10), 256x4x1 tokens/step, float32, seed 0``
        (``256x4x1x8 tokens/step`` with 8 processes)."""
        procs = f"x{self.world_size}" if self.world_size > 1 else ""
        s = (
            f"{self.variant}, lr {self.lr:.0e} {self.schedule} (warm-up {self.warmup_steps}), "
            f"{self.seq_len}x{self.batch_size}x{self.grad_accum}{procs} tokens/step, {self.dtype}, seed {self.seed}"
        )
        if self.kl_weight:
            s += f", KL-to-RoPE {self.kl_weight:g} (not DroPE's recipe)"
        return s
