"""The recalibration loop: continued pretraining of a RoPE model with RoPE removed from step 0.

All parameters are trained with AdamW (β, ε, weight decay and clipping from the :class:`Recipe`),
next-token cross-entropy on packed blocks, optional gradient accumulation, checkpointing and
autocast. The data order is a pure function of the seed and the step (a seeded permutation per
epoch), and the optimizer, scheduler and RNG state are saved with the latest checkpoint, so an
interrupted run resumes at the same token count and ends bit-identical to an uninterrupted one on
CPU (tested). Progress bar: tokens/s, loss, LR. Log: one JSON line per step in ``train_log.jsonl``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F

from drope_lens.errors import DropeLensInputError
from drope_lens.recalibrate import checkpoint as ck
from drope_lens.recalibrate.blocks import BlockSplit, check_disjoint, make_split
from drope_lens.recalibrate.corpus import documents_fingerprint, load_documents
from drope_lens.recalibrate.recipe import Recipe

RUN_FILE = "recalibrate.json"
LOG_FILE = "train_log.jsonl"
HELDOUT_FILE = "heldout.safetensors"


def default_run_dir(variant: str = "nope", recipe: Optional[Recipe] = None) -> Path:
    """Where a run of the embedded model is cached: ``$DROPE_LENS_CACHE/recalibrated/`` +
    ``smollm2-135m-instruct-<variant>-<token budget>tok`` (``recipe=None``: the default recipe of
    ``variant``), so runs of different budgets never share a folder."""
    from drope_lens.loading.embedded import cache_root

    return cache_root() / "recalibrated" / (recipe or Recipe(variant=variant)).cache_name()


@dataclass
class RecalibrationResult:
    """What a run produced: checkpoints (step, tokens, path), loss curve, speed."""

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


def _autocast(recipe: Recipe, device: str):
    if recipe.dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16)


def check_device(device: str) -> torch.device:
    """A usable torch device, or a clear error (before any model is loaded)."""
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
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise DropeLensInputError(f"--device {device}: MPS is not available here")
    return dev


def _kl(student_logits, teacher_logits, temperature: float):
    s = F.log_softmax(student_logits.float() / temperature, -1)
    t = F.log_softmax(teacher_logits.float() / temperature, -1)
    return (t.exp() * (t - s)).sum(-1).mean() * temperature**2


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
    p = run_dir / RUN_FILE
    if not p.is_file():
        return
    old = json.loads(p.read_text())
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
            "source, recipe and data. Use another --out, or --force to start over there."
        )


def _rewrite_log(path: Path, upto_step: int) -> None:
    if not path.exists():
        return
    from drope_lens.atomic import atomic_write_text

    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= upto_step]
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def recalibrate(
    source: Union[str, os.PathLike, None] = None,
    recipe: Recipe = Recipe(),
    out: Union[str, os.PathLike, None] = None,
    *,
    data: Optional[Sequence[str]] = None,
    progress: bool = True,
    force: bool = False,
    stop_after: Optional[int] = None,
) -> RecalibrationResult:
    """Recalibrate ``source`` (a RoPE Llama folder / hub id; ``None``: the embedded SmolLM2-135M)
    into a DroPE model, saving checkpoints under ``out`` (default :func:`default_run_dir`).

    Checkpoint 0 is the untrained zero-shot NoPE model; then one every ``recipe.save_every``
    steps and at the end. Rerunning the same call resumes from the latest checkpoint (same source,
    recipe and data required). ``stop_after``: stop (with a checkpoint) after that many steps in
    total, as an interruption would. ``data``: paths and ``hf:NAME[:CONFIG][@SPLIT]`` specs
    (default: the built-in corpus).
    """
    from drope_lens.recalibrate.model import drope_training_model, load_weights

    check_device(recipe.device)
    if source is None:
        from drope_lens.loading.embedded import embedded_checkpoint

        source = embedded_checkpoint()
    source = str(source)
    run_dir = Path(out) if out is not None else default_run_dir(recipe.variant, recipe)
    if force and run_dir.exists():
        import shutil

        for p in ck.list_checkpoints(run_dir):
            shutil.rmtree(p)
        for name in (RUN_FILE, LOG_FILE, HELDOUT_FILE):
            (run_dir / name).unlink(missing_ok=True)
    torch.manual_seed(recipe.seed)
    hf, tok = drope_training_model(source, recipe.variant, device=recipe.device)
    if recipe.grad_checkpointing:
        hf.gradient_checkpointing_enable()
    docs = load_documents(data)
    split = make_split(
        tok, docs, seq_len=recipe.seq_len, n_heldout=recipe.heldout_blocks, seed=recipe.seed, bos=recipe.bos
    )
    check_disjoint(split)
    manifest = _run_manifest(source, recipe, split, documents_fingerprint(docs), len(docs), data)
    _check_same_run(run_dir, manifest)
    run_dir.mkdir(parents=True, exist_ok=True)
    from drope_lens.jsonio import atomic_write_json

    atomic_write_json(run_dir / RUN_FILE, manifest)
    if not (run_dir / HELDOUT_FILE).exists():
        ck.save_tensor_file(run_dir / HELDOUT_FILE, {"tokens": split.heldout})

    teacher = None
    if recipe.kl_weight > 0:  # not part of DroPE's recipe
        from transformers import LlamaForCausalLM

        # transformers types PreTrainedModel.to's wrapper as taking the model first
        teacher = LlamaForCausalLM.from_pretrained(source, dtype=torch.float32).to(recipe.device).eval()  # type: ignore[arg-type]
        teacher.requires_grad_(False)

    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=recipe.lr, betas=recipe.betas, eps=recipe.eps, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: recipe.lr_at(s) / recipe.lr)
    total = recipe.total_steps
    result = RecalibrationResult(str(run_dir), recipe, source)
    start = 0
    resume = ck.latest_resumable(run_dir)
    if resume is not None:
        load_weights(hf, resume)
        state = torch.load(resume / ck.STATE_FILE, weights_only=False)
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        start = int(state["step"])
        result.resumed_from = start
        _rewrite_log(run_dir / LOG_FILE, start)
    hf.train()

    def meta(step: int, loss: Optional[float]) -> dict:
        tokens = step * recipe.tokens_per_step
        from drope_lens import __version__

        return {
            "step": step,
            "tokens": tokens,
            "label": ck.recalibration_label(tokens),
            "recipe": recipe.to_dict(),
            "recipe_label": recipe.describe(),
            "source": source,
            "variant": recipe.variant,
            "loss": loss,
            "run_dir": "..",
            "heldout": f"../{HELDOUT_FILE}",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "drope_lens": __version__,
        }

    def save(step: int, loss: Optional[float]) -> None:
        state = {
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "rng": torch.get_rng_state(),
            "step": step,
        }
        folder = ck.save_checkpoint(
            hf,
            tok,
            run_dir / ck.checkpoint_name(step),
            variant=recipe.variant,
            meta=meta(step, loss),
            trainer_state=state,
        )
        for older in ck.list_checkpoints(run_dir):
            if older != folder:
                ck.drop_trainer_state(older)

    if start == 0 and not (run_dir / ck.checkpoint_name(0)).exists():
        save(0, None)
    order = _Order(len(split.train), recipe.seed)
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=start, desc="recalibrate", unit="step", disable=not progress, dynamic_ncols=True)
    t0 = time.perf_counter()
    step, loss_val = start, None
    stop = total if stop_after is None else min(total, stop_after)
    with open(run_dir / LOG_FILE, "a", encoding="utf-8") as log:
        while step < stop:
            loss_sum = 0.0
            for a in range(recipe.grad_accum):
                first = (step * recipe.grad_accum + a) * recipe.batch_size
                x = split.train[order.rows(first, recipe.batch_size)].to(recipe.device)
                with _autocast(recipe, recipe.device):
                    fwd = hf(input_ids=x, labels=x)
                    loss = fwd.loss
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(input_ids=x).logits
                        loss = loss + recipe.kl_weight * _kl(fwd.logits, t_logits, recipe.kl_temperature)
                (loss / recipe.grad_accum).backward()
                loss_sum += float(loss.detach())
            if not math.isfinite(loss_sum):
                raise FloatingPointError(f"non-finite loss at step {step}; lower --lr or use float32")
            lr = opt.param_groups[0]["lr"]
            gnorm = float(torch.nn.utils.clip_grad_norm_(params, recipe.clip_grad))
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            step += 1
            loss_val = loss_sum / recipe.grad_accum
            elapsed = time.perf_counter() - t0
            tps = (step - start) * recipe.tokens_per_step / max(elapsed, 1e-9)
            log.write(
                json.dumps(
                    {
                        "step": step,
                        "tokens": step * recipe.tokens_per_step,
                        "loss": loss_val,
                        "lr": lr,
                        "grad_norm": gnorm,
                        "tokens_per_s": round(tps, 2),
                        "wall_s": round(elapsed, 2),
                    }
                )
                + "\n"
            )
            log.flush()
            result.losses.append(loss_val)
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:.0f}")
            if step % recipe.save_every == 0 or step == stop:
                save(step, loss_val)
    bar.close()
    hf.eval()
    result.wall_s = time.perf_counter() - t0
    result.steps_done = step
    result.tokens_seen = step * recipe.tokens_per_step
    if step > start:
        result.tokens_per_s = (step - start) * recipe.tokens_per_step / result.wall_s
    result.finished = step >= total
    result.checkpoints = [
        {"step": m["step"], "tokens": m["tokens"], "path": str(p)}
        for p in ck.list_checkpoints(run_dir)
        for m in [ck.checkpoint_meta(p)]
    ]
    result.trained = hf
    return result
