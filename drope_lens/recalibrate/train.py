"""Recalibration through the HF ``Trainer``: continued pretraining of a RoPE model with RoPE removed from step 0.

The Trainer (and accelerate beneath it) runs the loop, so the same call trains on CPU, one GPU,
several GPUs (DDP, FSDP, DeepSpeed ZeRO-1/3 from the accelerate config a user launches with) and
several nodes: ``torchrun --nproc-per-node N -m drope_lens recalibrate ...`` and ``accelerate launch
--config_file X -m drope_lens recalibrate ...`` take the unchanged command line. drope_lens adds
what DroPE's recipe and its own runs need, in :class:`RecalibrationTrainer`:

* the model (:class:`~drope_lens.recalibrate.model.DroPELlamaForCausalLM`: identity rotary, q/k
  norms for ``qk_norm_nope``), whose checkpoints are in SakanaAI's DroPE format;
* the data order: packed blocks (:mod:`~drope_lens.recalibrate.blocks`), the held-out blocks set aside
  before training, and a seeded order -- sample ``i`` of the stream is training block
  ``randperm(n, Generator(seed·1_000_003 + epoch))[i mod n]`` -- read sequentially and sharded by
  accelerate, so an optimizer step sees the same global batch whatever the number of processes, and a
  resumed run the blocks an uninterrupted one would;
* AdamW (β, ε, weight decay from the :class:`Recipe`, HF's ``adamw_torch``), clipping, and the
  recipe's LR schedule (linear warm-up, then constant or cosine: :meth:`Recipe.lr_at`);
* the loss: next-token cross-entropy, the mean over each micro-batch divided by the gradient
  accumulation (every block has ``seq_len`` real tokens, so this is the mean over the global batch),
  plus ``kl_weight`` × KL to the frozen RoPE teacher when asked (not DroPE's recipe).

Resuming: rerun the same command; the latest checkpoint that still has its optimizer state is handed
to ``Trainer.train(resume_from_checkpoint=...)``, which restores weights, optimizer, scheduler, RNG
and the position in the data (bit-identical to an uninterrupted run on CPU, tested).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import os
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from drope_lens.errors import DropeLensInputError
from drope_lens.loading import drope_format as fmt
from drope_lens.recalibrate.blocks import BlockSplit, check_disjoint, make_split
from drope_lens.recalibrate.corpus import documents_fingerprint, load_documents
from drope_lens.recalibrate.recipe import Recipe, launch_world_size

RUN_FILE = fmt.RUN_FILE
HELDOUT_FILE = fmt.HELDOUT_FILE


def default_run_dir(variant: str = "nope", recipe: Optional[Recipe] = None) -> Path:
    """Where a run of the embedded model is cached: ``$DROPE_LENS_CACHE/recalibrated/`` +
    ``smollm2-135m-instruct-<variant>-<token budget>tok`` (``recipe=None``: the default recipe of
    ``variant``), so runs of different budgets never share a folder."""
    return fmt.cache_dir() / (recipe or Recipe(variant=variant)).cache_name()


@dataclass
class RecalibrationResult:
    """What a run produced: checkpoints (step, tokens, path), loss curve, speed, launch."""

    run_dir: str
    recipe: Recipe
    source: str
    checkpoints: list[dict] = field(default_factory=list)
    steps_done: int = 0
    tokens_seen: int = 0
    losses: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    tokens_per_s: float = float("nan")
    resumed_from: Optional[int] = None
    finished: bool = False
    launch: dict = field(default_factory=dict)
    tracked: Any = field(default=None, repr=False, compare=False)  # TrackResult of the training callback
    trained: Any = field(default=None, repr=False, compare=False)  # the in-memory module

    @property
    def final(self) -> Optional[str]:
        return self.checkpoints[-1]["path"] if self.checkpoints else None

    def to_dict(self) -> dict:
        return {
            "run_dir": self.run_dir,
            "recipe": self.recipe.to_dict(),
            "source": self.source,
            "checkpoints": self.checkpoints,
            "steps_done": self.steps_done,
            "tokens_seen": self.tokens_seen,
            "losses": self.losses,
            "wall_s": round(self.wall_s, 2),
            "tokens_per_s": self.tokens_per_s,
            "resumed_from": self.resumed_from,
            "finished": self.finished,
            "launch": self.launch,
        }


class _Order:
    """Training-block order: epoch ``e`` is ``randperm(n, Generator(seed·1_000_003 + e))``."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed = n, seed
        self._perms: dict[int, list[int]] = {}

    def rows(self, start: int, count: int) -> list[int]:
        out = []
        for i in range(start, start + count):
            e, p = divmod(i, self.n)
            if e not in self._perms:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + e)
                self._perms = {e: torch.randperm(self.n, generator=g).tolist()}
            out.append(self._perms[e][p])
        return out


class OrderedBlocks(torch.utils.data.Dataset):
    """The training stream as a map-style dataset: item ``i`` is block ``_Order(...).rows(i, 1)``
    (input ids = labels; the model shifts them), ``length`` items in all."""

    def __init__(self, blocks: torch.Tensor, length: int, seed: int):
        self.blocks, self.length, self.order = blocks, length, _Order(len(blocks), seed)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict:
        row = self.blocks[self.order.rows(int(i), 1)[0]]
        return {"input_ids": row, "labels": row}


def check_device(device: str) -> torch.device:
    """A usable torch device (``auto``: CUDA if this torch sees a GPU, else MPS, else CPU), or a clear
    error (before any model is loaded)."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        return torch.device("mps" if mps is not None and mps.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise DropeLensInputError(f"--device {device}: {exc}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DropeLensInputError(
            f"--device {device}: this torch build sees no CUDA GPU "
            f"(torch {torch.__version__}, CUDA {torch.version.cuda})"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DropeLensInputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "cuda" and dev.index not in (None, 0):
        raise DropeLensInputError(
            f"--device {device}: the Trainer places each process on its own GPU; pick the GPU with "
            f"CUDA_VISIBLE_DEVICES={dev.index} and pass --device cuda"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DropeLensInputError(f"--device {device}: MPS is not available here")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise DropeLensInputError(f"--device {device}: recalibration runs on cpu, cuda or mps")
    return dev


def attention_implementation(recipe: Recipe, device: torch.device) -> str:
    """The HF ``attn_implementation`` of a run (see :data:`~drope_lens.recalibrate.recipe.ATTENTIONS`)."""
    have_flash = importlib.util.find_spec("flash_attn") is not None
    if recipe.attention == "flash_attention_2":
        if not have_flash or device.type != "cuda" or recipe.dtype != "bfloat16":
            raise DropeLensInputError(
                "--attention flash_attention_2 needs the flash-attn package, a CUDA GPU and --dtype bfloat16"
            )
        return "flash_attention_2"
    if recipe.attention == "auto":
        return "flash_attention_2" if have_flash and device.type == "cuda" and recipe.dtype == "bfloat16" else "sdpa"
    return recipe.attention


def _kl(student_logits, teacher_logits, temperature: float):
    s = F.log_softmax(student_logits.float() / temperature, -1)
    t = F.log_softmax(teacher_logits.float() / temperature, -1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


def training_arguments(recipe: Recipe, run_dir: Path, device: torch.device, *, tracking: bool = False):
    """The HF ``TrainingArguments`` of a recipe (the Trainer's own LR schedule is replaced by the
    recipe's in :class:`RecalibrationTrainer`)."""
    from transformers import TrainingArguments

    # transformers 5 renamed gradient_checkpointing (kept as a deprecated alias) to activation_checkpointing
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    ckpt = "activation_checkpointing" if "activation_checkpointing" in known else "gradient_checkpointing"
    ckpt_args: dict[str, Any] = {
        ckpt: recipe.grad_checkpointing,
        f"{ckpt}_kwargs": {"use_reentrant": False} if recipe.grad_checkpointing else None,
    }
    return TrainingArguments(
        output_dir=str(run_dir),
        per_device_train_batch_size=recipe.batch_size,
        gradient_accumulation_steps=recipe.grad_accum,
        max_steps=recipe.total_steps,
        learning_rate=recipe.lr,
        optim="adamw_torch",
        adam_beta1=recipe.betas[0],
        adam_beta2=recipe.betas[1],
        adam_epsilon=recipe.eps,
        weight_decay=recipe.weight_decay,
        max_grad_norm=recipe.clip_grad,
        lr_scheduler_type="constant",  # replaced by Recipe.lr_at (create_scheduler)
        bf16=recipe.dtype == "bfloat16",
        use_cpu=device.type == "cpu",
        **ckpt_args,
        save_strategy="steps",
        save_steps=recipe.save_every,
        logging_strategy="steps",
        logging_steps=1,
        include_num_input_tokens_seen=True,  # trainer_state.json records the tokens seen (any reader can use it)
        seed=recipe.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        dataloader_pin_memory=device.type == "cuda",
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        ddp_timeout=4 * 3600 if tracking else 1800,  # the other processes wait while the main one tracks
        log_level="passive",  # keep the process's transformers verbosity (the Trainer would set it globally)
        log_level_replica="passive",
    )


def _trainer_class():
    from transformers import Trainer

    class RecalibrationTrainer(Trainer):
        """``Trainer`` with the recipe's LR schedule, drope_lens's data order and the optional KL term."""

        loss_is_scaled_for_ga = False  # a per-micro-batch mean: the Trainer divides it by the accumulation

        def __init__(self, *args: Any, recipe: Recipe, teacher: Any = None, **kwargs: Any):
            super().__init__(*args, **kwargs)
            self.recipe = recipe
            self.teacher = teacher.to(self.args.device) if teacher is not None else None
            self.model_accepts_loss_kwargs = False  # no num_items_in_batch: blocks are never padded

        def _get_train_sampler(self, train_dataset=None):
            dataset = train_dataset if train_dataset is not None else self.train_dataset
            return torch.utils.data.SequentialSampler(typing.cast(OrderedBlocks, dataset))

        def create_scheduler(self, num_training_steps: int, optimizer: Any = None):
            if self.lr_scheduler is None:
                peak, lr_at = self.recipe.lr, self.recipe.lr_at
                opt = typing.cast(torch.optim.Optimizer, optimizer if optimizer is not None else self.optimizer)
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step) / peak)
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.teacher is None:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            outputs = model(**inputs)
            with torch.no_grad():
                teacher_logits = self.teacher(input_ids=inputs["input_ids"]).logits
            loss = outputs.loss + self.recipe.kl_weight * _kl(
                outputs.logits, teacher_logits, self.recipe.kl_temperature
            )
            return (loss, outputs) if return_outputs else loss

    return RecalibrationTrainer


def _run_manifest(
    source: str, recipe: Recipe, split: BlockSplit, docs_fp: str, n_docs: int, data: Optional[Sequence[str]]
) -> dict:
    return {
        "source": source,
        "recipe": recipe.to_dict(),
        "training_identity": recipe.training_identity(),
        "data": {
            "spec": list(data) if data else "builtin",
            "documents_fingerprint": docs_fp,
            "n_documents": n_docs,
            "split": split.to_dict(),
        },
    }


def _check_same_run(run_dir: Path, manifest: dict) -> None:
    old = fmt.read_run(run_dir)
    if old is None:
        return
    diffs = [k for k in ("source",) if old.get(k) != manifest[k]]
    diffs += [
        f"recipe.{k}"
        for k in manifest["training_identity"]
        if (old.get("training_identity") or {}).get(k) != manifest["training_identity"][k]
    ]
    if (old.get("data") or {}).get("split", {}).get("fingerprint") != manifest["data"]["split"]["fingerprint"]:
        diffs.append("data")
    if diffs:
        raise DropeLensInputError(
            f"{run_dir} holds a run with a different {', '.join(diffs)}; resume needs the same "
            "source, recipe (global batch included) and data. Use another --out, or --force to start over there."
        )


def _clear_run(run_dir: Path) -> None:
    import shutil

    from drope_lens.recalibrate.recorder import LOG_FILE

    for p in fmt.trainer_checkpoints(run_dir) if run_dir.is_dir() else []:
        shutil.rmtree(p)
    for name in (RUN_FILE, LOG_FILE, HELDOUT_FILE):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "track", ignore_errors=True)


def recalibrate(
    source: Union[str, os.PathLike, None] = None,
    recipe: Recipe = Recipe(),
    out: Union[str, os.PathLike, None] = None,
    *,
    data: Optional[Sequence[str]] = None,
    progress: bool = True,
    force: bool = False,
    stop_after: Optional[int] = None,
    track_every: int = 0,
    track_options: Any = None,
) -> RecalibrationResult:
    """Recalibrate ``source`` (a RoPE Llama folder / hub id; ``None``: the embedded SmolLM2-135M)
    into a DroPE model with the HF Trainer, saving checkpoints under ``out`` (default
    :func:`default_run_dir`). Call it once per process: under ``torchrun`` / ``accelerate launch``
    every process runs it; ``recipe.batch_size`` is each process's micro-batch and ``recipe.world_size``
    is set from the launch.

    Checkpoint 0 is the untrained zero-shot NoPE model; then one every ``recipe.save_every``
    steps and at the end. Rerunning the same call resumes from the latest checkpoint (same source,
    recipe, global batch and data required). ``stop_after``: stop (with a checkpoint) after that many
    steps in total, as an interruption would. ``data``: paths and ``hf:NAME[:CONFIG][@SPLIT]`` specs
    (default: the built-in corpus). ``track_every``: measure ``track_options``
    (:class:`~drope_lens.options.TrackOptions`, default :data:`~drope_lens.recalibrate.recipe.TRACK_METRICS`)
    on the weights being trained every that many steps (:class:`~drope_lens.track.callback.TrackCallback`), into
    ``<out>/track/during_training.json`` and ``.png``.
    """
    from drope_lens.recalibrate.model import drope_training_model
    from drope_lens.recalibrate.recorder import RunRecorder

    recipe = dataclasses.replace(recipe, world_size=launch_world_size())
    device = check_device(recipe.device)
    if source is None:
        from drope_lens.loading.embedded import embedded_checkpoint

        source = embedded_checkpoint()
    source = str(source)
    run_dir = Path(out) if out is not None else default_run_dir(recipe.variant, recipe)
    attention = attention_implementation(recipe, device)
    _check_launch_precision(recipe)
    args = training_arguments(recipe, run_dir, device, tracking=track_every > 0)
    if args.world_size != recipe.world_size:
        raise RuntimeError(f"WORLD_SIZE says {recipe.world_size} processes, the Trainer sees {args.world_size}")
    if args.n_gpu > 1:
        raise DropeLensInputError(
            f"one process sees {args.n_gpu} GPUs: launch one process per GPU (torchrun --nproc-per-node "
            f"{args.n_gpu} -m drope_lens recalibrate ...) or pick one with CUDA_VISIBLE_DEVICES=0"
        )
    state = args.distributed_state
    main = args.process_index == 0
    if force and main:
        _clear_run(run_dir)
    state.wait_for_everyone()

    torch.manual_seed(recipe.seed)
    with _quiet_hf():
        model, tok = drope_training_model(source, recipe.variant, attn_implementation=attention)
    docs = load_documents(data)
    split = make_split(
        tok, docs, seq_len=recipe.seq_len, n_heldout=recipe.heldout_blocks, seed=recipe.seed, bos=recipe.bos
    )
    check_disjoint(split)
    manifest = _run_manifest(source, recipe, split, documents_fingerprint(docs), len(docs), data)
    _check_same_run(run_dir, manifest)
    resume = _resume_point(run_dir)

    teacher = None
    if recipe.kl_weight > 0:  # not part of DroPE's recipe
        from transformers import LlamaForCausalLM

        teacher = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        teacher.requires_grad_(False)

    tracker = None
    if track_every:
        from drope_lens.options import TrackOptions
        from drope_lens.recalibrate.recipe import TRACK_METRICS
        from drope_lens.track.callback import TrackCallback

        opts = track_options or TrackOptions.resolve(None, {"metrics": TRACK_METRICS})
        tracker = TrackCallback(
            track_every,
            options=opts,
            heldout=str(run_dir / HELDOUT_FILE),
            rope=source if opts.include_rope else None,
            tokens_per_step=recipe.tokens_per_step,
            progress=progress,
        )
    recorder = RunRecorder(run_dir, recipe, source, progress=progress, stop_after=stop_after, pauses=tracker)
    from transformers import default_data_collator

    dataset = OrderedBlocks(split.train, recipe.total_steps * recipe.global_batch, recipe.seed)
    trainer = _trainer_class()(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=default_data_collator,
        processing_class=tok,
        callbacks=[recorder] + ([tracker] if tracker is not None else []),
        recipe=recipe,
        teacher=teacher,
    )
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    for printer in (PrinterCallback, ProgressCallback):  # the recorder draws the bar and writes the log
        trainer.remove_callback(printer)
    _check_sharded_saving(trainer)
    recorder.trainer = trainer
    if tracker is not None:
        tracker.trainer = trainer
    launch = _launch(trainer, recipe, attention)
    if main:
        from drope_lens.jsonio import atomic_write_json
        from drope_lens.recalibrate.checkpoint import save_tensor_file

        run_dir.mkdir(parents=True, exist_ok=True)
        is_default = run_dir.resolve() == default_run_dir(recipe.variant).resolve()
        atomic_write_json(run_dir / RUN_FILE, {**manifest, "default_run": is_default, "launch": launch})
        if not (run_dir / HELDOUT_FILE).exists():
            save_tensor_file(run_dir / HELDOUT_FILE, {"tokens": split.heldout})
    state.wait_for_everyone()

    result = RecalibrationResult(str(run_dir), recipe, source, launch=launch)
    result.resumed_from = resume[1] if resume else None
    t0 = time.perf_counter()
    trains = not (resume and stop_after is not None and resume[1] >= stop_after)
    if trains:
        with _quiet_hf():
            trainer.train(resume_from_checkpoint=str(resume[0]) if resume else None)
    result.wall_s = time.perf_counter() - t0
    state.wait_for_everyone()
    step = trainer.state.global_step if trains else resume[1] if resume else 0
    result.steps_done = step
    result.tokens_seen = step * recipe.tokens_per_step
    result.losses = recorder.losses
    if step > (result.resumed_from or 0) and recorder.train_s > 0:
        result.tokens_per_s = (step - recorder.start_step) * recipe.tokens_per_step / recorder.train_s
    result.finished = step >= recipe.total_steps
    result.checkpoints = [
        {"step": m["step"], "tokens": m["tokens"], "path": str(p)}
        for p in fmt.list_checkpoints(run_dir)
        for m in [fmt.checkpoint_meta(p)]
    ]
    result.tracked = tracker.result if tracker is not None else None
    result.trained = trainer.model.eval()
    return result


def _check_launch_precision(recipe: Recipe) -> None:
    """The accelerate config's ``mixed_precision`` must agree with ``--dtype`` (the recipe says what was trained)."""
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    wanted = "bf16" if recipe.dtype == "bfloat16" else "no"
    if launched not in ("no", wanted):
        raise DropeLensInputError(
            f"the accelerate config asks for mixed_precision {launched!r} but --dtype is {recipe.dtype}: pass "
            "--dtype bfloat16 for bf16 (fp16 is refused), or set mixed_precision: 'no' in the config"
        )


def _check_sharded_saving(trainer: Any) -> None:
    """Sharded runs must save whole models: each checkpoint is a DroPE checkpoint that track and load_hooked read."""
    if trainer.is_fsdp_enabled:
        kind = str(trainer.accelerator.state.fsdp_plugin.state_dict_type)
        if "FULL_STATE_DICT" not in kind:
            raise DropeLensInputError(
                f"FSDP state_dict_type is {kind}: set fsdp_state_dict_type: FULL_STATE_DICT in the accelerate "
                "config (examples/accelerate/fsdp.yaml), so every checkpoint holds the whole model"
            )
    if trainer.is_deepspeed_enabled:
        plugin = trainer.accelerator.state.deepspeed_plugin
        if plugin.zero_stage == 3 and not plugin.zero3_save_16bit_model:
            raise DropeLensInputError(
                "DeepSpeed ZeRO-3 needs zero3_save_16bit_model: true in the accelerate config "
                "(examples/accelerate/deepspeed_zero3.yaml), so every checkpoint holds the whole model"
            )


@contextlib.contextmanager
def _quiet_hf():
    """No transformers progress bars (a "Writing model shards" bar per checkpoint) inside the run's own."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _resume_point(run_dir: Path) -> Optional[tuple[Path, int]]:
    from drope_lens.recalibrate.checkpoint import latest_resumable

    found = latest_resumable(run_dir)
    if found is None:
        return None
    state = fmt.read_json(found / fmt.TRAINER_STATE) or {}
    return found, int(state.get("global_step") or fmt.checkpoint_step(found) or 0)


def _launch(trainer: Any, recipe: Recipe, attention: str) -> dict:
    """How this run is computed: processes, batches, device, backend, numerics, versions."""
    from importlib import metadata

    acc = trainer.accelerator
    versions = {}
    for pkg in ("torch", "transformers", "accelerate", "deepspeed", "flash-attn"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {
        "world_size": recipe.world_size,
        "num_nodes": max(1, recipe.world_size // int(os.environ.get("LOCAL_WORLD_SIZE", recipe.world_size))),
        "micro_batch": recipe.batch_size,
        "grad_accum": recipe.grad_accum,
        "global_batch": recipe.global_batch,
        "tokens_per_step": recipe.tokens_per_step,
        "distributed_type": str(acc.distributed_type).split(".")[-1],
        "mixed_precision": str(acc.mixed_precision),
        "device": str(trainer.args.device),
        "attention": attention,
        "gradient_checkpointing": recipe.grad_checkpointing,
        "versions": versions,
        "launcher": "accelerate launch"
        if any(k.startswith("ACCELERATE_") for k in os.environ)
        else ("torchrun" if "TORCHELASTIC_RUN_ID" in os.environ else "python"),
    }
