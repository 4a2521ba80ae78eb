"""``drope-lens detect``: massive Q/K/V values on both models of the pair."""

from __future__ import annotations

import argparse
import functools

from drope_lens.cli.common import batch_kwargs, command_options, emit_json, texts_from_args
from drope_lens.cli.fields import add_option, options_from_args
from drope_lens.cli.massive_args import add_massive_args, models_from_args
from drope_lens.options import MassiveOptions as O

HELP = "count massive Q/K/V channels per layer (token-L2 > λ × layer mean) on both models"


def add_parser(sub) -> None:
    d = sub.add_parser("detect", help=HELP, description=HELP + ".")
    add_massive_args(d, O)
    add_option(d, O, "tensors", "comma-separated subset of q,k,v (default: all)")
    add_option(d, O, "top", "top channels listed per tensor in --json")
    add_option(d, O, "context_length", "context for rotary bands (default: n_ctx)")
    d.set_defaults(func=run_detect, build_options=functools.partial(options_from_args, O))


def run_detect(args: argparse.Namespace) -> int:
    from drope_lens.analysis.massive import detect_massive

    texts = texts_from_args(args)
    out: dict = {"command": "detect", "n_texts": len(texts), "models": {}}
    for role, model in models_from_args(args):
        res = detect_massive(model, texts, command_options(args), progress=True, **batch_kwargs(args))
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
