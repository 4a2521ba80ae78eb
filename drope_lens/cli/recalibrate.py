"""``drope-lens recalibrate``: RoPE -> DroPE continued pretraining, checkpoints in SakanaAI's format."""

from __future__ import annotations

import argparse
import sys

HELP = "recalibrate a RoPE model into a DroPE model (RoPE removed, all parameters trained), with checkpoints"

IDLE_TOKENS_PER_S = 125  # the default recipe on 2 idle CPU cores, measured (docs/recalibration.md)

EPILOG = """\
With no arguments: the embedded SmolLM2-135M on the built-in corpus (3.36 M tokens: Gutenberg
Shakespeare/Milton, Wikipedia sample, Jane Austen; `make corpus` fetches it), {steps} steps of
{batch}x{seq} tokens ({tokens:,} tokens; about {minutes:.0f} min at the ~{rate} tokens/s of 2 idle CPU
cores), a checkpoint every {every} steps, saved in the drope_lens cache ({cache}), where
`drope-lens report --drope recalibrated` and `drope-lens track` find it. Rerun the same command
after an interruption and it resumes from the latest checkpoint.

Training runs through the HF Trainer: the same command line runs under torchrun or accelerate
launch on several GPUs or nodes (DDP, FSDP, DeepSpeed from an accelerate config); --batch-size is
each process's micro-batch, the global batch is batch x grad-accum x processes.

examples:
  drope-lens recalibrate
  drope-lens recalibrate --variant qk_norm_nope --max-tokens 2000000 --out runs/qk
  drope-lens recalibrate --device cuda --dtype bfloat16 --seq-len 1024 --batch-size 16 \\
      --max-steps 600 --save-every 100 --lr 3e-4 --track-every 100 --out runs/gpu
  torchrun --nproc-per-node 8 -m drope_lens recalibrate --dtype bfloat16 --out runs/ddp ...
  accelerate launch --config_file examples/accelerate/fsdp.yaml -m drope_lens recalibrate ...
  drope-lens track          # every checkpoint of the cached default run
"""


def add_parser(sub) -> None:
    from drope_lens.cli.fields import add_option
    from drope_lens.cli.lists import add_list_argument
    from drope_lens.options import METRIC_GROUPS
    from drope_lens.recalibrate.recipe import ATTENTIONS, DTYPES, SCHEDULES, TRACK_METRICS, VARIANTS, Recipe

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
    add_list_argument(
        p,
        "--data",
        metavar="PATH",
        help="training text, comma-separated: .txt/.jsonl files or folders, or hf:NAME[:CONFIG][@SPLIT] "
        "(default: the built-in offline corpus)",
    )
    R = Recipe
    add_option(p, R, "variant", "DroPE attention type", choices=VARIANTS)
    add_option(p, R, "max_steps", "optimizer steps")
    add_option(p, R, "max_tokens", "token budget (overrides --max-steps)")
    add_option(p, R, "seq_len", "block length, BOS included")
    add_option(p, R, "batch_size", "blocks per micro-batch of each process (HF per_device_train_batch_size)")
    add_option(p, R, "grad_accum", "micro-batches per step")
    add_option(p, R, "lr", "peak learning rate (default %(default)g)")
    add_option(p, R, "warmup_steps", "linear warm-up steps")
    add_option(p, R, "schedule", "after warm-up", choices=SCHEDULES)
    add_option(p, R, "save_every", "checkpoint every N steps")
    add_option(p, R, "heldout_blocks", "blocks set aside, never trained on")
    add_option(p, R, "dtype", "float32, or bfloat16 autocast with fp32 master weights", choices=DTYPES)
    add_option(p, R, "device", "auto (CUDA if available, else CPU), cpu, cuda or mps")
    add_option(p, R, "seed", "data split, order and init seed")
    add_option(p, R, "grad_checkpointing", "trade compute for activation memory")
    add_option(
        p,
        R,
        "attention",
        "HF attention; auto: flash_attention_2 on CUDA+bf16 if installed, else sdpa",
        choices=ATTENTIONS,
    )
    add_option(p, R, "kl_weight", "weight of a KL term to the frozen RoPE teacher; NOT part of DroPE's recipe")
    p.add_argument(
        "--track-every",
        type=int,
        default=0,
        metavar="N",
        help="measure the track metrics on the weights being trained every N steps (0: off), into <out>/track/",
    )
    p.add_argument(
        "--track-metrics",
        default=TRACK_METRICS,
        metavar="LIST",
        help=f"with --track-every: comma-separated subset of {','.join(METRIC_GROUPS)} (default %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="delete the run's checkpoints and start over")
    from drope_lens.cli.common import add_quantize_arg

    add_quantize_arg(
        p,
        help="none only: recalibration trains every parameter, which quantized weights cannot be; measure the "
        "checkpoints quantized instead (track/report --quantize)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os

    from drope_lens.cli.common import check_model_path, check_out_dir
    from drope_lens.cli.fields import options_from_args
    from drope_lens.errors import DropeLensInputError
    from drope_lens.options import TrackOptions
    from drope_lens.recalibrate.recipe import Recipe, launch_world_size

    if args.quantize not in (None, "none"):
        raise DropeLensInputError(
            f"--quantize {args.quantize}: recalibration trains every parameter (DroPE's recipe), which "
            "bitsandbytes' quantized weights cannot be. Train in float32/bfloat16 and measure the checkpoints it "
            f"writes quantized: drope-lens track RUN --quantize {args.quantize}, or report --drope CKPT --quantize "
            f"{args.quantize}."
        )
    recipe = options_from_args(Recipe, args, world_size=launch_world_size())
    from drope_lens.recalibrate import recalibrate
    from drope_lens.recalibrate.train import attention_implementation, check_device

    attention_implementation(recipe, check_device(args.device))
    check_model_path(args.rope, "--rope")
    if args.track_every < 0:
        raise DropeLensInputError(f"--track-every must be >= 0, got {args.track_every}")
    track = TrackOptions.resolve(None, {"metrics": args.track_metrics})
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
    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        print(
            f"recipe: {recipe.describe()}; {recipe.total_steps} steps x {recipe.tokens_per_step} tokens",
            file=sys.stderr,
        )
    res = recalibrate(
        args.rope,
        recipe,
        args.out,
        data=args.data,
        force=args.force,
        progress=main_process,
        track_every=args.track_every,
        track_options=track,
    )
    if main_process:
        speed = (
            f"{res.tokens_per_s:.1f} tokens/s" if res.steps_done > (res.resumed_from or 0) else "nothing left to train"
        )
        launch = res.launch
        print(
            f"{res.run_dir}: {res.steps_done} steps, {res.tokens_seen:,} tokens, {speed}, "
            f"{len(res.checkpoints)} checkpoints (latest {res.final}); global batch {launch['global_batch']} "
            f"({launch['micro_batch']} x {launch['grad_accum']} x {launch['world_size']} processes), "
            f"{launch['distributed_type']} on {launch['device']}"
        )
    return 0
