"""``drope-lens tasks``: parametric vs contextual knowledge tasks under each condition, for a pair."""

from __future__ import annotations

import argparse
import math
import sys
import time

from drope_lens.cli.common import add_batch_size, add_pair_args, command_options, emit_json, load_pair_from_args
from drope_lens.cli.fields import add_option, options_from_args
from drope_lens.cli.lists import int_list
from drope_lens.options import TaskOptions as O

HELP = "knowledge tasks (cities, sports, sentiment, passkey) under baseline / qk / bos_mlp / combined"


def add_parser(sub) -> None:
    from drope_lens.options import DEFAULT_N

    p = sub.add_parser("tasks", help=HELP, description=HELP + ".")
    add_pair_args(p)
    for name in ("tasks", "conditions"):
        add_option(p, O, name, f"comma-separated, from {','.join(O.choices(name))} (default: all)")
    add_option(
        p,
        O,
        "n",
        "items per task (passkey: per length); default " + ", ".join(f"{task} {n}" for task, n in DEFAULT_N.items()),
        type=int,
    )
    add_option(p, O, "seed", "seed of the task items, demonstrations and AUROC bootstrap")
    add_option(
        p,
        O,
        "scoring",
        "logprob: compare answer log-probs (passkey: greedy + exact match); "
        "calibrated: logprob minus the option prior of content-free prompts (Zhao et al. 2021); "
        "study: 20-token greedy generation + the study's parsing, one denominator",
    )
    add_option(p, O, "n_shot", "balanced demonstrations before each choice item")
    add_option(
        p,
        O,
        "task_format",
        "cities/sports as the study's yes/no questions (default) or as two-way "
        "completions ('In which country is X?': true country vs a distractor)",
    )
    add_option(p, O, "chat", "wrap prompts in the chat template")
    p.add_argument(
        "--bos-layer",
        type=int_list,
        metavar="L[,L_DROPE]",
        help="BOS-MLP ablation layer for both models, or one per model; "
        "default: each model's BOS spike layer on the built-in texts",
    )
    add_option(p, O, "passkey_lengths", "passkey prompt lengths in tokens", metavar="N,N")
    add_option(p, O, "passkey_depth", "fraction of the passkey filler placed before the needle, in [0, 1]")
    add_batch_size(p)
    p.add_argument("--no-items", action="store_true", help="leave per-item predictions out of the JSON")
    p.set_defaults(func=run, build_options=build_options)


def build_options(args: argparse.Namespace) -> O:
    """The :class:`~drope_lens.options.TaskOptions` of the parsed arguments (CLI-worded errors first)."""
    if args.n_shot < 0:
        raise ValueError(f"--n-shot must be >= 0, got {args.n_shot}")
    if args.task_format == "completion" and args.scoring == "study":
        raise ValueError("--task-format completion needs --scoring logprob or calibrated.")
    if args.bos_layer is not None and len(args.bos_layer) not in (1, 2):
        raise ValueError("--bos-layer takes one layer or two (rope,drope).")
    return options_from_args(O, args)


def run(args: argparse.Namespace) -> int:
    from drope_lens.tasks.runner import run_pair_tasks

    layers = args.bos_layer
    bos = None if layers is None else (layers[0] if len(layers) == 1 else {"rope": layers[0], "drope": layers[1]})
    t0 = time.perf_counter()
    pair = load_pair_from_args(args)
    cmp = run_pair_tasks(pair, bos_layer=bos, batch_size=args.batch_size, progress=True, options=command_options(args))
    _print(cmp)
    print(
        f"\nwall time {time.perf_counter() - t0:.1f} s (models: "
        f"{cmp.rope.wall_seconds:.1f} s + {cmp.drope.wall_seconds:.1f} s)"
    )
    out = cmp.to_dict(include_items=not args.no_items)
    out["wall_seconds"] = time.perf_counter() - t0
    emit_json(args, out)
    return 0


def _fmt(x: float, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "  n/a"
    return f"{x:6.1f}" if pct else f"{x:5.2f}"


def _print(cmp) -> None:
    for role, res in cmp.items():
        print(f"\n[{role}] {res.model}  (scoring: {res.scoring}, {res.n_shot}-shot{', chat' if res.chat else ''})")
        print(
            f"  {'task':<10} {'condition':<9} {'acc':>5} {'95% CI':>13} {'AUROC':>5} {'95% CI':>13} "
            f"{'degr%':>6} {'margin':>6} {'parsed':>6}"
        )
        for s in res.scores:
            deg = res.degradation(s.task, s.condition) if "baseline" in res.conditions else math.nan
            print(
                f"  {s.task:<10} {s.condition:<9} {_fmt(s.accuracy)} "
                f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] {_fmt(s.auroc)} "
                f"[{_fmt(s.auroc_low)}, {_fmt(s.auroc_high)}] {_fmt(deg, True)} "
                f"{_fmt(s.mean_margin)} {_fmt(s.parse_rate)}"
            )
        for cond, summ in res.summary().items():
            if cond == "baseline":
                continue
            print(
                f"  {cond:<9} degradation: parametric {_fmt(summ['parametric_degradation'], True)}%, "
                f"contextual {_fmt(summ['contextual_degradation'], True)}%, ratio {_fmt(summ['ratio'])}"
            )
    sys.stdout.flush()
