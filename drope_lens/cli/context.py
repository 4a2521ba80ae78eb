"""``drope-lens context``: the context-length experiment (passkey, PPL, sinks, BOS, massive vs length)."""

from __future__ import annotations

import argparse
import sys

from drope_lens.cli.common import add_model_args, add_output_args, command_options, emit_json, load_pair_from_args
from drope_lens.cli.lists import add_list_argument, float_list, int_list
from drope_lens.options import ContextOptions as O

HELP = "context-length experiment: passkey by depth, perplexity, sink rate, BOS ratio, massive Q/K vs length"


def add_parser(sub) -> None:
    p = sub.add_parser("context", help=HELP, description=HELP + ". Seeded; both models of the pair.")
    add_model_args(p)
    add_list_argument(
        p,
        "--lengths",
        item=int_list,
        default=list(O.default("lengths")),
        metavar="N,N",
        help="input lengths in tokens, BOS included (default: " + ",".join(map(str, O.default("lengths"))) + ")",
    )
    add_list_argument(
        p,
        "--depths",
        item=float_list,
        default=list(O.default("depths")),
        metavar="D,D",
        help="passkey needle depths in [0, 1] (default: " + ",".join(map(str, O.default("depths"))) + ")",
    )
    p.add_argument(
        "--n-per-depth",
        type=int,
        default=O.default("n_per_depth"),
        help="passkey prompts per depth and length (0: none)",
    )
    p.add_argument("--seed", type=int, default=O.default("seed"))
    p.add_argument("--tau", type=float, default=O.default("tau"), help="sink-rate threshold (>=)")
    p.add_argument("--threshold", type=float, default=O.default("threshold"), help="massive-value lambda")
    p.add_argument("--batch-size", type=int, default=4, help="passkey prompts decoded together")
    p.add_argument(
        "--beyond-context", action="store_true", help="allow lengths above the models' n_ctx (their training context)"
    )
    p.add_argument("--figure", metavar="PNG", help="save the metric-vs-length figure here")
    add_output_args(p)
    p.set_defaults(func=run, build_options=options_from_args)


def options_from_args(args: argparse.Namespace) -> O:
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    return O(
        lengths=tuple(args.lengths),
        depths=tuple(args.depths),
        n_per_depth=args.n_per_depth,
        seed=args.seed,
        tau=args.tau,
        threshold=args.threshold,
        beyond_context=args.beyond_context,
    )


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
