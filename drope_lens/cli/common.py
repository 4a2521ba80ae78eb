"""Options shared by every subcommand: which pair to load, on what, and where output goes."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("models (default: embedded SmolLM2-135M and its zero-shot NoPE twin)")
    g.add_argument("--rope", metavar="ID_OR_DIR", help="RoPE model: hub id or local folder")
    g.add_argument("--drope", metavar="ID_OR_DIR",
                   help="DroPE checkpoint (hub id or folder); omit for the zero-shot NoPE twin of --rope")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="model dtype (attention scores are always computed in float32)")
    g.add_argument("--device", default="cpu", help="torch device, e.g. cpu, cuda, cuda:1")
    g.add_argument("--offload", default=None, metavar="DEVICE",
                   help="keep the idle model of the pair here (e.g. cpu): one model on --device at a time")
    g.add_argument("--n-devices", type=int, default=1, metavar="N",
                   help="split each model's layers over N devices (TransformerLens n_devices)")


def add_output_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="PATH", dest="json_out",
                        help="also write the full result as JSON to PATH ('-' for stdout)")


def load_pair_from_args(args: argparse.Namespace):
    from drope_lens.loading import load_pair

    print(f"Loading {'embedded default pair' if args.rope is None else args.rope} ...", file=sys.stderr)
    return load_pair(args.rope, args.drope, dtype=args.dtype, device=args.device,
                     offload=getattr(args, "offload", None), n_devices=getattr(args, "n_devices", 1))


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON via a temp file and rename, so a crash never leaves a half-written file."""
    from drope_lens.report.store import atomic_write_json

    atomic_write_json(Path(path), payload)


def emit_json(args: argparse.Namespace, payload: Any) -> None:
    if not getattr(args, "json_out", None):
        return
    if args.json_out == "-":
        json.dump(payload, sys.stdout, indent=2, default=_jsonable)
        sys.stdout.write("\n")
    else:
        write_json_atomic(Path(args.json_out), payload)
        print(f"wrote {args.json_out}", file=sys.stderr)


def _jsonable(obj: Any) -> Any:
    try:
        import numpy as np
        import torch

        if isinstance(obj, torch.Tensor):
            return obj.tolist()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, torch.dtype):
            return str(obj)
    except ImportError:  # pragma: no cover
        pass
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return str(obj)
