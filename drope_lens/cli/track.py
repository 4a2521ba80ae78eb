"""``drope-lens track``: analyses over the checkpoints of a recalibration (metric vs tokens)."""

from __future__ import annotations

import argparse
import sys

from drope_lens.cli.common import command_options
from drope_lens.cli.fields import add_option, options_from_args

HELP = "track massive values, sinks, BOS, perplexity (...) over recalibration checkpoints"

EPILOG = """\
Give a recalibration run folder (its RoPE source, step 0 and every checkpoint are measured) or
checkpoint folders. Each (checkpoint, metric group) is saved under --out/parts as it finishes;
rerun the same command and finished ones are reused (keyed by options and model identity).

examples:
  drope-lens track --json track.json --figure track.png     # the cached default run
  drope-lens track runs/qk --metrics ppl,massive,sinks,bos
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
    folders = list(args.checkpoints)
    if not folders:
        from drope_lens.recalibrate.checkpoint import cached_recalibrated

        folders = [str(cached_recalibrated().parent)]
    points = checkpoint_points(folders, include_rope=opts.include_rope)  # bad folders fail before loading
    out = args.out
    if out is None and len(folders) == 1 and (Path(folders[0]) / "recalibrate.json").is_file():
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
