"""``drope-lens detect``: massive Q/K/V values on both models of the pair."""

from __future__ import annotations

import argparse

from drope_lens.cli.common import command_options, emit_json
from drope_lens.cli.lists import add_list_argument
from drope_lens.cli.massive_args import add_massive_args, models_from_args, texts_from_args
from drope_lens.options import MassiveOptions

HELP = "count massive Q/K/V channels per layer (token-L2 > λ × layer mean) on both models"


def add_parser(sub) -> None:
    d = sub.add_parser("detect", help=HELP, description=HELP + ".")
    add_massive_args(d)
    add_list_argument(
        d,
        "--tensors",
        default=list(MassiveOptions.default("tensors")),
        help="comma-separated subset of q,k,v (default: all)",
    )
    d.add_argument(
        "--top", type=int, default=MassiveOptions.default("top"), help="top channels listed per tensor in --json"
    )
    d.add_argument("--context-length", type=int, help="context for rotary bands (default: n_ctx)")
    d.set_defaults(func=run_detect, build_options=options_from_args)


def options_from_args(args: argparse.Namespace) -> MassiveOptions:
    return MassiveOptions(
        threshold=args.threshold,
        scope=args.scope,
        rotary=args.rotary,
        tensors=tuple(args.tensors),
        top=args.top,
        context_length=args.context_length,
    )


def run_detect(args: argparse.Namespace) -> int:
    from drope_lens.analysis.massive import detect_massive

    texts = texts_from_args(args)
    out: dict = {"command": "detect", "n_texts": len(texts), "models": {}}
    for role, model in models_from_args(args):
        res = detect_massive(
            model, texts, command_options(args), batch_size=args.batch_size, max_length=args.max_length, progress=True
        )
        out["models"][role] = res.to_dict()
        print(f"[{role}] {res.summary()}")
        _print_layers(res)
    if len(out["models"]) == 2:
        a, b = out["models"]["rope"]["tensors"], out["models"]["drope"]["tensors"]
        out["change_pct"] = {
            t: (100.0 * (b[t]["total_mean"] - a[t]["total_mean"]) / a[t]["total_mean"] if a[t]["total_mean"] else None)
            for t in a
        }
        print(
            "change DroPE/NoPE vs RoPE: "
            + ", ".join(
                f"{t.upper()} {v:+.1f}%" if v is not None else f"{t.upper()} n/a" for t, v in out["change_pct"].items()
            )
        )
    emit_json(args, out)
    return 0


def _print_layers(res) -> None:
    ts = res.tensors
    print("  layer " + " ".join(f"{t.upper():>7}" for t in ts))
    for layer in range(res.n_layers):
        print(f"  {layer:5d} " + " ".join(f"{float(res.per_layer_mean(t)[layer]):7.1f}" for t in ts))
