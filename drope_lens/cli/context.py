"""``drope-lens context``: the context-length experiment (passkey, PPL, sinks, BOS, massive vs length)."""

from __future__ import annotations

import argparse
import sys

from drope_lens.cli.common import add_batch_size, add_pair_args, command_options, emit_json, load_pair_from_args
from drope_lens.cli.fields import add_option, options_from_args
from drope_lens.options import ContextOptions as O

HELP = "context-length experiment: passkey by depth, perplexity, sink rate, BOS ratio, massive Q/K vs length"


def add_parser(sub) -> None:
    p = sub.add_parser("context", help=HELP, description=HELP + ". Seeded; both models of the pair.")
    add_pair_args(p)
    add_option(p, O, "lengths", "input lengths in tokens, BOS included", metavar="N,N")
    add_option(p, O, "depths", "passkey needle depths in [0, 1]", metavar="D,D")
    add_option(p, O, "n_per_depth", "passkey prompts per depth and length, 0 for none")
    add_option(p, O, "seed", "seed of the long text's order and of the passkey prompts")
    add_option(p, O, "tau", "sink-rate threshold (>=)")
    add_option(p, O, "threshold", "massive-value lambda")
    add_batch_size(p, 4, "passkey prompts decoded together")
    add_option(p, O, "beyond_context", "allow lengths above the models' n_ctx (their training context)")
    p.add_argument("--figure", metavar="PNG", help="save the metric-vs-length figure here")
    p.set_defaults(func=run, build_options=build_options)


def build_options(args: argparse.Namespace) -> O:
    """The :class:`~drope_lens.options.ContextOptions` of the parsed arguments (``--batch-size`` checked too)."""
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    return options_from_args(O, args)


def run(args: argparse.Namespace) -> int:
    from drope_lens.analysis.context import pair_context_experiment

    pair = load_pair_from_args(args)
    res = pair_context_experiment(
        pair,
        options=command_options(args),
        batch_size=args.batch_size,
        progress=sys.stderr.isatty(),
        log=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(res.summary())
    if args.figure:
        from drope_lens.views.context_figure import plot_context
        from drope_lens.views.figures import save_figure

        d = res.to_dict()
        save_figure(plot_context({d["rope"]["model"]: d["rope"], d["drope"]["model"]: d["drope"]}), args.figure)
        print(f"wrote {args.figure}", file=sys.stderr)
    emit_json(args, res.to_dict())
    return 0
