"""``drope-lens tasks``: parametric vs contextual knowledge tasks under each condition, for a pair."""

from __future__ import annotations

import argparse
import math
import sys
import time

from drope_lens.cli.common import add_model_args, add_output_args, command_options, emit_json, load_pair_from_args
from drope_lens.cli.lists import add_list_argument, int_list
from drope_lens.options import TaskOptions as O

HELP = "knowledge tasks (cities, sports, sentiment, passkey) under baseline / qk / bos_mlp / combined"


def add_parser(sub) -> None:
    from drope_lens.options import CONDITIONS, DEFAULT_N, SCORING, TASKS

    p = sub.add_parser("tasks", help=HELP, description=HELP + ".")
    add_model_args(p)
    add_output_args(p)
    add_list_argument(p, "--tasks", default=list(TASKS), help=f"comma-separated, from {','.join(TASKS)}")
    add_list_argument(p, "--conditions", default=list(CONDITIONS), help=f"comma-separated, from {','.join(CONDITIONS)}")
    p.add_argument(
        "--n",
        type=int,
        help="items per task (passkey: per length); default "
        + ", ".join(f"{task} {n}" for task, n in DEFAULT_N.items()),
    )
    p.add_argument("--seed", type=int, default=O.default("seed"))
    p.add_argument(
        "--scoring",
        choices=SCORING,
        default=O.default("scoring"),
        help="logprob: compare answer log-probs (passkey: greedy + exact match); "
        "calibrated: logprob minus the option prior of content-free prompts (Zhao et al. 2021); "
        "study: 20-token greedy generation + the study's parsing, one denominator",
    )
    p.add_argument(
        "--n-shot",
        type=int,
        default=O.default("n_shot"),
        help="balanced demonstrations before each choice item (default %(default)s)",
    )
    p.add_argument(
        "--task-format",
        choices=O.choices("task_format"),
        default=O.default("task_format"),
        help="cities/sports as the study's yes/no questions (default) or as two-way "
        "completions ('In which country is X?': true country vs a distractor)",
    )
    p.add_argument("--chat", action="store_true", help="wrap prompts in the chat template")
    p.add_argument(
        "--bos-layer",
        type=int_list,
        metavar="L[,L_DROPE]",
        help="BOS-MLP ablation layer for both models, or one per model; "
        "default: each model's BOS spike layer on the built-in texts",
    )
    add_list_argument(p, "--passkey-lengths", item=int_list, default=list(O.default("passkey_lengths")), metavar="N,N")
    p.add_argument("--passkey-depth", type=float, default=O.default("passkey_depth"))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-items", action="store_true", help="leave per-item predictions out of the JSON")
    p.set_defaults(func=run, build_options=options_from_args)


def options_from_args(args: argparse.Namespace) -> O:
    if args.n_shot < 0:
        raise ValueError(f"--n-shot must be >= 0, got {args.n_shot}")
    if args.task_format == "completion" and args.scoring == "study":
        raise ValueError("--task-format completion needs --scoring logprob or calibrated.")
    if args.bos_layer is not None and len(args.bos_layer) not in (1, 2):
        raise ValueError("--bos-layer takes one layer or two (rope,drope).")
    return O(
        tasks=tuple(args.tasks),
        conditions=tuple(args.conditions),
        n=args.n,
        seed=args.seed,
        scoring=args.scoring,
        n_shot=args.n_shot,
        task_format=args.task_format,
        chat=args.chat,
        passkey_lengths=tuple(args.passkey_lengths),
        passkey_depth=args.passkey_depth,
    )


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
