"""``drope-lens report``: every experiment on a pair, one results folder, resumable."""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from drope_lens.cli.common import add_model_args, command_options, pair_from_args
from drope_lens.cli.fields import add_option, options_from_args

HELP = "run every experiment on a RoPE/DroPE pair and write report.md, results.json, figures, views"

EPILOG = """\
The folder gets report.html (the whole report on one page: the study's claims with this pair's
verdicts, tables, figures and views; opens offline), report.md (the same, figures inline),
results.json (every number with provenance), figures/*.png and views/*.html. Each experiment is
saved to parts/ as soon as it finishes: rerun the same command after an interruption and finished
experiments are reused (--force reruns them). The last line is the page's file:// address;
--open opens it in a browser.

examples:
  drope-lens report                          # embedded SmolLM2-135M and its zero-shot NoPE twin (~8 min)
  drope-lens report --quick                  # reduced version (~2 min on 2 CPU cores)
  drope-lens report --rope meta-llama/Llama-2-7b-hf --drope SakanaAI/Llama-2-7b-hf-DroPE \\
      --dtype bfloat16 --device cuda --out llama2_report --task-n 100 --passkey-lengths 256 512 1024
"""


def add_parser(sub) -> None:
    from drope_lens.options import DEFAULT_STEPS, OPTIONAL_STEPS, QUICK_N, REPORT_N, REPORT_STEPS
    from drope_lens.options import ReportOptions as R

    p = sub.add_parser(
        "report", help=HELP, description=HELP + ".", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(p)
    p.add_argument("--out", default="drope_lens_results", help="results folder (default: %(default)s)")
    add_option(p, R, "quick", "reduced experiments (fewer texts, seeds, items)")
    add_option(
        p,
        R,
        "steps",
        "comma-separated subset of: "
        + ", ".join(REPORT_STEPS + OPTIONAL_STEPS)
        + " (default: "
        + ",".join(DEFAULT_STEPS)
        + "); the optional 'extended' (residual massive "
        "activations, study Exp 5-9) and 'context' (context-length experiment) run only "
        "when named (context never with --quick)",
    )
    add_option(p, R, "threshold", "massive-value λ")
    add_option(p, R, "n_seeds", "random controls for disruption")
    add_option(
        p,
        R,
        "task_n",
        "items per task, passkey: per length (default: "
        + ", ".join(f"{task} {n}" for task, n in REPORT_N.items())
        + "; --quick: "
        + ", ".join(map(str, QUICK_N.values()))
        + ")",
    )
    add_option(
        p, R, "task_scoring", "choice-task scoring (default: calibrated, contextual calibration)", flag="--scoring"
    )
    add_option(p, R, "n_shot", "demonstrations per choice item")
    add_option(p, R, "task_format", "cities/sports as two-way completions (default) or the study's yes/no questions")
    add_option(
        p, R, "passkey_lengths", "passkey prompt lengths in tokens (default %(default)s; --quick: 128)", metavar="N,N"
    )
    add_option(p, R, "max_length", "cut texts at this many tokens, BOS included (default %(default)s; --quick: 128)")
    add_option(p, R, "batch_size", "texts per forward pass")
    add_option(p, R, "seed", "seed for datasets and controls")
    p.add_argument("--force", action="store_true", help="discard saved parts and rerun everything")
    p.add_argument("--open", action="store_true", help="open report.html in a web browser when done")
    p.add_argument(
        "--allow-partial",
        action="store_true",
        help="exit 0 even if a figure or view could not be written (it is listed in report.md)",
    )
    p.set_defaults(func=run, build_options=build_options)


def build_options(args: argparse.Namespace):
    """The :class:`~drope_lens.options.ReportOptions` of the parsed arguments."""
    from drope_lens.options import ReportOptions

    return options_from_args(ReportOptions, args)


def run(args: argparse.Namespace) -> int:
    from drope_lens.cli.common import check_model_args, check_out_dir
    from drope_lens.runs.store import ResultsLock

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
    verbose = bool(getattr(args, "verbose", False))
    _announce_conversion(args)
    pair = pair_from_args(args)
    print(f"rope:  {pair.labels['rope']}\ndrope: {pair.labels['drope']}", file=sys.stderr)
    progress = verbose or sys.stderr.isatty()  # bars on a terminal; a log gets one line per step
    results = run_report(pair, out, options, progress=progress, verbose=verbose)
    from drope_lens.report.findings import Finding, findings_text

    findings = [Finding(**f) for f in results.get("findings") or []]
    print("\n" + findings_text(findings, results))
    page = (out / "report.html").resolve()
    print(
        f"\nreport written in {time.perf_counter() - t0:.0f} s to {out}/ "
        "(report.html, report.md, results.json, figures/, views/)"
    )
    missing = results["files"].get("missing") or []
    if page.exists():
        print(page.as_uri())
        if args.open:
            open_page(page)
    if missing and not args.allow_partial:
        print(
            f"drope-lens report: error: {len(missing)} output group(s) not written (listed in report.md); "
            "rerun with --allow-partial to accept a partial report",
            file=sys.stderr,
        )
        return 1
    return 0


def _announce_conversion(args: argparse.Namespace) -> None:
    """One line before the embedded model's one-time conversion (its own bars are hidden)."""
    if args.rope is not None:
        return
    from drope_lens.loading.embedded import embedded_checkpoint_cached

    if not embedded_checkpoint_cached():
        print(
            "converting the embedded model once (GGUF → safetensors, ~45 s; cached for later runs) ...",
            file=sys.stderr,
        )


def open_page(page: Path) -> bool:
    """Open ``page`` in the default web browser; say so (and what to do) when there is none."""
    import webbrowser

    try:
        opened = webbrowser.open(page.as_uri())
    except webbrowser.Error:
        opened = False
    if not opened:
        print(f"no web browser found to open the page; open {page.as_uri()} yourself", file=sys.stderr)
    return opened
