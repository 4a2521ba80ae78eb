"""``drope-lens disrupt``: perplexity with the massive Q/K channels zeroed vs seeded random controls."""

from __future__ import annotations

import argparse

from drope_lens.cli.common import batch_kwargs, command_options, emit_json, texts_from_args
from drope_lens.cli.fields import add_option, options_from_args
from drope_lens.cli.massive_args import add_massive_args, models_from_args
from drope_lens.options import DisruptionOptions as O

HELP = "perplexity with massive Q/K channels zeroed vs seeded random controls; M-R, t-tests"


def add_parser(sub) -> None:
    r = sub.add_parser("disrupt", help=HELP, description=HELP + ".")
    add_massive_args(r, O)
    r.add_argument(
        "--identify-file",
        metavar="PATH",
        help="identification texts (one per paragraph); default: built-in 'identify' split",
    )
    add_option(r, O, "n_seeds", "random-control seeds")
    add_option(r, O, "first_seed", "seeds are FIRST..FIRST+N-1 (default %(default)s, the study)")
    add_option(
        r, O, "aggregate", "how identification texts are combined (default: threshold the text-mean M, the study)"
    )
    add_option(
        r, O, "eval_on_identify", "evaluate on the identification texts (the study's quirk; default: disjoint texts)"
    )
    r.add_argument(
        "--allow-overlap",
        action="store_true",
        help="random control may include massive channels (the study; default: excluded)",
    )
    r.add_argument("--welch", action="store_true", help="Welch instead of Student t-test between models")
    r.set_defaults(func=run_disrupt, build_options=build_options)


def build_options(args: argparse.Namespace) -> O:
    """The :class:`~drope_lens.options.DisruptionOptions` of the parsed arguments."""
    return options_from_args(O, args, exclude_massive=not args.allow_overlap)


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
            progress=True,
            **batch_kwargs(args),
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
