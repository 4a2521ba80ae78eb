"""``drope-lens disrupt``: perplexity with the massive Q/K channels zeroed vs seeded random controls."""

from __future__ import annotations

import argparse

from drope_lens.cli.common import command_options, emit_json
from drope_lens.cli.massive_args import add_massive_args, models_from_args, texts_from_args
from drope_lens.options import DisruptionOptions as O

HELP = "perplexity with massive Q/K channels zeroed vs seeded random controls; M-R, t-tests"


def add_parser(sub) -> None:
    r = sub.add_parser("disrupt", help=HELP, description=HELP + ".")
    add_massive_args(r)
    r.add_argument(
        "--identify-file",
        metavar="PATH",
        help="identification texts (one per paragraph); default: built-in 'identify' split",
    )
    r.add_argument(
        "--n-seeds", type=int, default=O.default("n_seeds"), help="random-control seeds (default %(default)s)"
    )
    r.add_argument(
        "--first-seed",
        type=int,
        default=O.default("first_seed"),
        help="seeds are FIRST..FIRST+N-1 (default %(default)s, the study)",
    )
    r.add_argument(
        "--aggregate",
        choices=O.choices("aggregate"),
        default=O.default("aggregate"),
        help="how identification texts are combined (default: threshold the text-mean M, the study)",
    )
    r.add_argument(
        "--eval-on-identify",
        action="store_true",
        help="evaluate on the identification texts (the study's quirk; default: disjoint texts)",
    )
    r.add_argument(
        "--allow-overlap",
        action="store_true",
        help="random control may include massive channels (the study; default: excluded)",
    )
    r.add_argument("--welch", action="store_true", help="Welch instead of Student t-test between models")
    r.set_defaults(func=run_disrupt, build_options=options_from_args)


def options_from_args(args: argparse.Namespace) -> O:
    return O(
        threshold=args.threshold,
        scope=args.scope,
        rotary=args.rotary,
        aggregate=args.aggregate,
        n_seeds=args.n_seeds,
        first_seed=args.first_seed,
        eval_on_identify=args.eval_on_identify,
        exclude_massive=not args.allow_overlap,
    )


def run_disrupt(args: argparse.Namespace) -> int:
    from drope_lens.analysis.disruption import compare_disruption, run_disruption
    from drope_lens.data.texts import load_text_file

    identify = load_text_file(args.identify_file) if args.identify_file else None
    has_eval = bool(args.text or args.texts_file or args.hf_dataset or args.genre)
    if args.eval_on_identify and has_eval:
        raise ValueError("--eval-on-identify evaluates on the identification texts; drop the eval text options.")
    eval_texts = texts_from_args(args) if has_eval else None
    results = {}
    for role, model in models_from_args(args):
        results[role] = run_disruption(
            model,
            command_options(args),
            identify_texts=identify,
            eval_texts=eval_texts,
            batch_size=args.batch_size,
            max_length=args.max_length,
            progress=True,
        )
        print(f"[{role}] {results[role].summary()}")
    out: dict = {"command": "disrupt", "models": {r: x.to_dict() for r, x in results.items()}}
    if len(results) == 2:
        cmp = compare_disruption(results["rope"], results["drope"], equal_var=not args.welch)
        ind = cmp.independent()
        out.update(
            ratio_m_minus_r=cmp.ratio, independent_t=ind["t"], independent_p=ind["p"], equal_var=ind["equal_var"]
        )
        print(f"M-R ratio RoPE/DroPE = {cmp.ratio:.2f}; independent t = {ind['t']:.3g}, p = {ind['p']:.3g}")
    emit_json(args, out)
    return 0
