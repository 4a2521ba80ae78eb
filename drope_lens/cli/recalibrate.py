"""``drope-lens recalibrate``: RoPE -> DroPE continued pretraining, checkpoints in SakanaAI's format."""

from __future__ import annotations

import argparse
import sys

HELP = "recalibrate a RoPE model into a DroPE model (RoPE removed, all parameters trained), with checkpoints"

IDLE_TOKENS_PER_S = 125  # the default recipe on 2 idle CPU cores, measured (README)

EPILOG = """\
With no arguments: the embedded SmolLM2-135M on the built-in corpus (3.36 M tokens: Gutenberg
Shakespeare/Milton, Wikipedia sample, Jane Austen; `make corpus` fetches it), {steps} steps of
{batch}x{seq} tokens ({tokens:,} tokens; about {minutes:.0f} min at the ~{rate} tokens/s of 2 idle CPU
cores), a checkpoint every {every} steps, saved in the drope_lens cache ({cache}), where
`drope-lens report --drope recalibrated` and `drope-lens track` find it. Rerun the same command
after an interruption and it resumes from the latest checkpoint.

examples:
  drope-lens recalibrate
  drope-lens recalibrate --variant qk_norm_nope --max-tokens 2000000 --out runs/qk
  drope-lens recalibrate --device cuda --dtype bfloat16 --seq-len 1024 --batch-size 16 \\
      --max-steps 600 --save-every 100 --lr 3e-4 --out runs/gpu
  drope-lens track          # every checkpoint of the cached default run
"""


def add_parser(sub) -> None:
    from drope_lens.recalibrate.recipe import DTYPES, SCHEDULES, VARIANTS, Recipe

    d = Recipe()
    tokens = d.total_steps * d.tokens_per_step
    epilog = EPILOG.format(
        steps=d.total_steps,
        batch=d.batch_size,
        seq=d.seq_len,
        tokens=tokens,
        minutes=tokens / IDLE_TOKENS_PER_S / 60,
        rate=IDLE_TOKENS_PER_S,
        every=d.save_every,
        cache=f"recalibrated/{d.cache_name()}",
    )
    p = sub.add_parser(
        "recalibrate",
        help=HELP,
        description=HELP + ".",
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--rope", metavar="ID_OR_DIR", help="RoPE model to recalibrate (default: embedded SmolLM2-135M)")
    p.add_argument("--out", metavar="DIR", help="run folder (default: the drope_lens cache, for the embedded model)")
    p.add_argument(
        "--data",
        nargs="+",
        metavar="PATH",
        help="training text: .txt/.jsonl files or folders, or hf:NAME[:CONFIG][@SPLIT] "
        "(default: the built-in offline corpus)",
    )
    p.add_argument("--variant", default=d.variant, choices=VARIANTS, help="DroPE attention type (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=None, help="token budget (overrides --max-steps)")
    p.add_argument("--seq-len", type=int, default=d.seq_len, help="block length, BOS included (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="blocks per micro-batch (default %(default)s)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="micro-batches per step (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak learning rate (default %(default)g)")
    p.add_argument(
        "--warmup-steps", type=int, default=d.warmup_steps, help="linear warm-up steps (default %(default)s)"
    )
    p.add_argument("--schedule", default=d.schedule, choices=SCHEDULES, help="after warm-up (default %(default)s)")
    p.add_argument(
        "--save-every", type=int, default=d.save_every, help="checkpoint every N steps (default %(default)s)"
    )
    p.add_argument(
        "--heldout-blocks",
        type=int,
        default=d.heldout_blocks,
        help="blocks set aside, never trained on (default %(default)s)",
    )
    p.add_argument(
        "--dtype",
        default=d.dtype,
        choices=DTYPES,
        help="float32, or bfloat16 autocast with fp32 master weights (default %(default)s)",
    )
    p.add_argument("--device", default=d.device, help="torch device (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="data split, order and init seed (default %(default)s)")
    p.add_argument("--grad-checkpointing", action="store_true", help="trade compute for activation memory")
    p.add_argument(
        "--kl-weight",
        type=float,
        default=0.0,
        help="weight of a KL term to the frozen RoPE teacher; NOT part of DroPE's recipe (default 0)",
    )
    p.add_argument("--force", action="store_true", help="delete the run's checkpoints and start over")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from drope_lens.cli.common import check_model_path, check_out_dir
    from drope_lens.errors import DropeLensInputError
    from drope_lens.recalibrate import Recipe, recalibrate

    recipe = Recipe(
        variant=args.variant,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        schedule=args.schedule,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_steps=args.max_steps,
        max_tokens=args.max_tokens,
        save_every=args.save_every,
        heldout_blocks=args.heldout_blocks,
        dtype=args.dtype,
        device=args.device,
        seed=args.seed,
        grad_checkpointing=args.grad_checkpointing,
        kl_weight=args.kl_weight,
    )
    from drope_lens.recalibrate.train import check_device

    check_device(args.device)
    check_model_path(args.rope, "--rope")
    if args.out:
        check_out_dir(args.out)
    elif args.rope:
        raise DropeLensInputError("--out is required with --rope (the cache holds only the embedded model's run)")
    if args.data:
        from pathlib import Path

        for item in args.data:
            if not item.startswith("hf:") and not Path(item).exists():
                raise DropeLensInputError(f"--data {item}: no such file or folder")
    else:
        from drope_lens.recalibrate.corpus import builtin_corpus_files

        builtin_corpus_files()  # missing corpus: say how to fetch it, before loading anything
    print(f"recipe: {recipe.describe()}; {recipe.total_steps} steps x {recipe.tokens_per_step} tokens", file=sys.stderr)
    res = recalibrate(args.rope, recipe, args.out, data=args.data, force=args.force, progress=True)
    speed = f"{res.tokens_per_s:.1f} tokens/s" if res.steps_done > (res.resumed_from or 0) else "nothing left to train"
    print(
        f"{res.run_dir}: {res.steps_done} steps, {res.tokens_seen:,} tokens, {speed}, "
        f"{len(res.checkpoints)} checkpoints (latest {res.final})"
    )
    return 0
