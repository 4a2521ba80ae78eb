"""``drope-lens track``: analyses over the checkpoints of a recalibration (metric vs tokens)."""

from __future__ import annotations

import argparse
import sys

from drope_lens.cli.common import command_options
from drope_lens.cli.fields import add_option, options_from_args

HELP = "track massive values, sinks, BOS, perplexity (...) over recalibration checkpoints"

EPILOG = """\
Give a recalibration run folder (its RoPE source, step 0 and every checkpoint are measured), any
HF Trainer output folder (checkpoint-N/ folders, e.g. a SakanaAI/DroPE run; --rope adds the RoPE
reference, tokens seen come from trainer_state.json or --global-batch x --seq-len), or checkpoint
folders. Each (checkpoint, metric group) is saved under --out/parts as it finishes; rerun the same
command and finished ones are reused (keyed by options and model identity).

examples:
  drope-lens track --json track.json --figure track.png     # the cached default run
  drope-lens track runs/qk --metrics ppl,massive,sinks,bos
  drope-lens track sakana_out/ --rope HuggingFaceTB/SmolLM-360M --global-batch 64 --seq-len 2048
"""


def add_parser(sub) -> None:
    from drope_lens.options import METRIC_GROUPS
    from drope_lens.options import TrackOptions as O

    p = sub.add_parser(
        "track", help=HELP, description=HELP + ".", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        metavar="DIR",
        help="run folder or checkpoint folders (default: the cached embedded run)",
    )
    add_option(p, O, "metrics", f"comma-separated subset of {','.join(METRIC_GROUPS)}", spaces=False)
    p.add_argument("--out", metavar="DIR", help="parts folder for resume (default: <run>/track)")
    p.add_argument("--json", metavar="PATH", dest="json_out", help="write the rows as JSON here ('-': stdout)")
    p.add_argument("--figure", metavar="PNG", help="save the metric-vs-tokens figure here")
    add_option(p, O, "max_length", "cut analysis texts at N tokens")
    add_option(p, O, "heldout_blocks", "held-out blocks for ppl")
    add_option(p, O, "n_seeds", "random controls for disruption")
    add_option(p, O, "passkey_n", "passkey prompts")
    p.add_argument("--no-rope", action="store_true", help="leave out the RoPE reference of a run folder")
    p.add_argument(
        "--rope",
        metavar="ID_OR_DIR",
        help="the RoPE model a Trainer run started from: measured as the reference, and its tokenizer used "
        "for checkpoints saved without one",
    )
    p.add_argument("--tokenizer", metavar="ID_OR_DIR", help="tokenizer for checkpoints saved without one")
    p.add_argument(
        "--global-batch",
        type=int,
        metavar="N",
        help="a Trainer run's sequences per optimizer step, all processes (with --seq-len: tokens seen = "
        "step x N x seq-len when trainer_state.json does not record them)",
    )
    p.add_argument("--seq-len", type=int, metavar="N", help="a Trainer run's sequence length (with --global-batch)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    from drope_lens.cli.common import add_quantize_arg

    add_quantize_arg(p)
    p.add_argument("--force", action="store_true", help="recompute saved parts")
    p.set_defaults(func=run, build_options=build_options)


def build_options(args: argparse.Namespace):
    """The :class:`~drope_lens.options.TrackOptions` of the parsed arguments."""
    from drope_lens.options import TrackOptions

    return options_from_args(TrackOptions, args, include_rope=not args.no_rope)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from drope_lens.cli.common import check_out_dir, emit_json
    from drope_lens.errors import DropeLensInputError
    from drope_lens.track.pipeline import checkpoint_points, track

    opts = command_options(args)
    if args.figure and not Path(args.figure).parent.resolve().is_dir():
        raise DropeLensInputError(f"--figure {args.figure}: its folder does not exist")
    if (args.global_batch is None) != (args.seq_len is None):
        raise DropeLensInputError("--global-batch and --seq-len go together (tokens per step = their product)")
    for flag, v in (("--global-batch", args.global_batch), ("--seq-len", args.seq_len)):
        if v is not None and v < 1:
            raise DropeLensInputError(f"{flag} must be >= 1, got {v}")
    tokens_per_step = args.global_batch * args.seq_len if args.global_batch else None
    folders = list(args.checkpoints)
    from drope_lens.loading import drope_format as fmt

    if not folders:
        folders = [str(fmt.cached_recalibrated().parent)]
    points = checkpoint_points(  # bad folders fail before loading
        folders,
        include_rope=opts.include_rope,
        rope=args.rope,
        tokenizer=args.tokenizer,
        tokens_per_step=tokens_per_step,
    )
    out = args.out
    if out is None and len(folders) == 1 and fmt.read_run(folders[0]) is not None:
        out = str(Path(folders[0]) / "track")
    if out is not None:
        check_out_dir(out)
    quantize = None if args.quantize in (None, "none") else args.quantize
    res = track(
        points, options=opts, out=out, dtype=args.dtype, device=args.device, force=args.force, quantize=quantize
    )
    print(res.summary())
    if args.figure:
        from drope_lens.views.figures import save_figure
        from drope_lens.views.track_figure import plot_track

        save_figure(plot_track(res), args.figure)
        print(f"wrote {args.figure}", file=sys.stderr)
    emit_json(args, res.to_dict())
    return 0
