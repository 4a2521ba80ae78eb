"""``drope-lens summary``: load a pair, check both against Hugging Face, print what was loaded."""

from __future__ import annotations

import argparse
import time
from typing import Any

from drope_lens.cli.common import add_pair_args, emit_json, pair_from_args

HELP = "load a RoPE/DroPE pair, verify it against Hugging Face, print a summary"


def add_parser(sub) -> None:
    p = sub.add_parser("summary", help=HELP, description=HELP + ".")
    add_pair_args(p)
    p.add_argument(
        "--text",
        default="The river flows past the old mill, where the miller's "
        "daughter counts sacks of grain each autumn morning.",
        help="text used for the parity check",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from drope_lens.loading import embedded_checkpoint
    from drope_lens.loading.parity import logit_parity

    t0 = time.perf_counter()
    pair = pair_from_args(args)
    load_s = time.perf_counter() - t0
    tokens = pair.encode(args.text).tokens
    out: dict[str, Any] = {"load_seconds": round(load_s, 2), "tokens": int(tokens.shape[1]), "models": {}}
    for role, model in pair.items():
        cfg = model.cfg
        src = cfg.source
        entry = {
            "label": pair.labels[role],
            "position_encoding": cfg.position_encoding,
            "nope_origin": cfg.nope_origin,
            "layers": cfg.n_layers,
            "heads": cfg.n_heads,
            "kv_heads": cfg.n_key_value_heads or cfg.n_heads,
            "d_head": cfg.d_head,
            "dtype": str(cfg.dtype),
            "device": str(cfg.device),
        }
        if role == "drope" and args.drope is None:
            src = str(embedded_checkpoint()) if args.rope is None else args.rope
        try:
            hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, trust_remote_code=False)
            hf = hf.to(args.device).eval()
            if cfg.drope_attention_type not in (None, "nope") or cfg.softmax_scale is not None:
                raise ValueError("HF parity for DroPE q/k-norm or softmax_scale needs remote code")
            entry["parity_vs_hf"] = logit_parity(model, hf, tokens.to(cfg.device)).to_dict()
            del hf
        except Exception as exc:  # parity is informative; loading already succeeded
            entry["parity_vs_hf"] = f"skipped: {exc}"
        out["models"][role] = entry
    _print(out)
    emit_json(args, out)
    return 0


def _print(out: dict) -> None:
    print(f"Loaded in {out['load_seconds']} s; parity text = {out['tokens']} tokens (BOS included)")
    for role, e in out["models"].items():
        print(f"\n[{role}] {e['label']}")
        print(
            f"  {e['layers']} layers, {e['heads']} heads ({e['kv_heads']} KV), d_head {e['d_head']}, "
            f"{e['dtype']} on {e['device']}, position encoding: {e['position_encoding']}"
        )
        par = e["parity_vs_hf"]
        if isinstance(par, dict):
            print(
                f"  vs Hugging Face: max |logit diff| {par['max_abs_logit_diff']:.2e}, "
                f"max |log-prob diff| {par['max_abs_logprob_diff']:.2e}"
            )
        else:
            print(f"  vs Hugging Face: {par}")
