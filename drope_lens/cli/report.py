"""``drope-lens report``: every experiment on a pair, one results folder, resumable."""

from __future__ import annotations

import argparse
import shutil
import sys
import time

from drope_lens.cli.common import add_model_args, command_options, pair_from_args
from drope_lens.cli.lists import add_list_argument, int_list

HELP = "run every experiment on a RoPE/DroPE pair and write report.md, results.json, figures, views"

EPILOG = """\
The folder gets report.md, results.json (every number with provenance), figures/*.png and
views/*.html (open offline). Each experiment is saved to parts/ as soon as it finishes: rerun the
same command after an interruption and finished experiments are reused (--force reruns them).

examples:
  drope-lens report                          # embedded SmolLM2-135M and its zero-shot NoPE twin (~8 min)
  drope-lens report --quick                  # reduced version (~2 min on 2 CPU cores)
  drope-lens report --rope meta-llama/Llama-2-7b-hf --drope SakanaAI/Llama-2-7b-hf-DroPE \\
      --dtype bfloat16 --device cuda --out llama2_report --task-n 100 --passkey-lengths 256 512 1024
"""


def add_parser(sub) -> None:
    import dataclasses

    from drope_lens.options import FORMATS, QUICK_N, REPORT_N, SCORING
    from drope_lens.report.runner import DEFAULT_STEPS, OPTIONAL_STEPS, STEPS, ReportOptions

    R = {f.name: f.default for f in dataclasses.fields(ReportOptions)}  # defaults live in ReportOptions

    p = sub.add_parser(
        "report", help=HELP, description=HELP + ".", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    p.add_argument("--out", default="drope_lens_results", help="results folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="reduced experiments (fewer texts, seeds, items)")
    add_list_argument(
        p,
        "--steps",
        default=list(DEFAULT_STEPS),
        help="comma-separated subset of: "
        + ", ".join(STEPS + OPTIONAL_STEPS)
        + " (default: "
        + ",".join(DEFAULT_STEPS)
        + "); the optional 'extended' (residual massive "
        "activations, study Exp 5-9) and 'context' (context-length experiment) run only "
        "when named (context never with --quick)",
    )
    p.add_argument("--threshold", type=float, default=R["threshold"], help="massive-value λ (default %(default)s)")
    p.add_argument(
        "--n-seeds", type=int, default=R["n_seeds"], help="random controls for disruption (default %(default)s)"
    )
    p.add_argument(
        "--task-n",
        type=int,
        default=None,
        help="items per task, passkey: per length (default: "
        + ", ".join(f"{task} {n}" for task, n in REPORT_N.items())
        + "; --quick: "
        + ", ".join(map(str, QUICK_N.values()))
        + ")",
    )
    p.add_argument(
        "--scoring",
        default=R["task_scoring"],
        choices=SCORING,
        help="choice-task scoring (default: calibrated, contextual calibration)",
    )
    p.add_argument(
        "--n-shot", type=int, default=R["n_shot"], help="demonstrations per choice item (default %(default)s)"
    )
    p.add_argument(
        "--task-format",
        default=R["task_format"],
        choices=FORMATS,
        help="cities/sports as two-way completions (default) or the study's yes/no questions",
    )
    add_list_argument(
        p,
        "--passkey-lengths",
        item=int_list,
        default=list(R["passkey_lengths"]),
        metavar="N,N",
        help="passkey prompt lengths in tokens (default: "
        + ",".join(map(str, R["passkey_lengths"]))
        + "; --quick: 128)",
    )
    p.add_argument(
        "--max-length",
        type=int,
        default=R["max_length"],
        help="cut texts at this many tokens, BOS included (default %(default)s; --quick: 128)",
    )
    p.add_argument(
        "--batch-size", type=int, default=R["batch_size"], help="texts per forward pass (default %(default)s)"
    )
    p.add_argument("--seed", type=int, default=R["seed"], help="seed for datasets and controls")
    p.add_argument("--force", action="store_true", help="discard saved parts and rerun everything")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="exit 0 even if a figure or view could not be written (it is listed in report.md)",
    )
    p.set_defaults(func=run, build_options=options_from_args)


def options_from_args(args: argparse.Namespace):
    from drope_lens.report.runner import ReportOptions

    return ReportOptions(
        quick=args.quick,
        seed=args.seed,
        threshold=args.threshold,
        n_seeds=args.n_seeds,
        task_n=args.task_n,
        task_scoring=args.scoring,
        n_shot=args.n_shot,
        task_format=args.task_format,
        steps=tuple(args.steps),
        passkey_lengths=tuple(args.passkey_lengths),
        max_length=args.max_length,
        batch_size=args.batch_size,
    )


def run(args: argparse.Namespace) -> int:
    from drope_lens.cli.common import check_model_args, check_out_dir
    from drope_lens.report.store import ResultsLock

    options = command_options(args)
    out = check_out_dir(args.out)
    check_model_args(args)
    # refuse a concurrent writer before spending time loading models (run_report locks again itself)
    lock = ResultsLock(out, say=lambda m: print(m, file=sys.stderr))
    lock.acquire()
    lock.release()
    if args.force and (out / "parts").exists():
        shutil.rmtree(out / "parts")
    from drope_lens.report.runner import run_report

    t0 = time.perf_counter()
    pair = pair_from_args(args)
    print(f"pair: {pair.labels['rope']}  vs  {pair.labels['drope']}", file=sys.stderr)
    results = run_report(pair, out, options)
    print(
        f"\nreport written to {out / 'report.md'} in {time.perf_counter() - t0:.0f} s "
        f"(results.json, figures/, views/ beside it)"
    )
    missing = results["files"].get("missing") or []
    if missing and not args.allow_partial:
        print(
            f"drope-lens report: error: {len(missing)} output group(s) not written (listed in report.md); "
            "rerun with --allow-partial to accept a partial report",
            file=sys.stderr,
        )
        return 1
    return 0
