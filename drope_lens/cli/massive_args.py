"""Options and inputs shared by ``drope-lens detect`` and ``drope-lens disrupt``: the pair (or one member), texts, λ."""

from __future__ import annotations

import argparse
import sys

from drope_lens.cli.common import add_pair_texts_args, load_pair_from_args
from drope_lens.options import MassiveOptions as O


def add_massive_args(p: argparse.ArgumentParser) -> None:
    g = add_pair_texts_args(p, "texts (detect default: all built-in texts; disrupt default: built-in 'eval' split)")
    g.add_argument("--genre", help="one genre of the built-in texts")
    g.add_argument("--hf-dataset", metavar="NAME", help="Hugging Face dataset (needs `datasets` and network)")
    g.add_argument("--hf-config", help="dataset config, e.g. wikitext-2-raw-v1")
    g.add_argument("--hf-split", default="test")
    g.add_argument("--hf-column", default="text")
    g.add_argument("--n-texts", type=int, default=20, help="rows taken from --hf-dataset (default 20)")
    g.add_argument(
        "--max-length", type=int, default=512, help="truncate each text to this many tokens, BOS included (default 512)"
    )
    g.add_argument("--batch-size", type=int, default=8)
    m = p.add_argument_group("definition")
    m.add_argument("--threshold", type=float, default=O.default("threshold"), help="λ (default %(default)s)")
    m.add_argument(
        "--scope",
        choices=O.choices("scope"),
        default=O.default("scope"),
        help="mean over the layer's heads × d_head matrix (study, default) or per head",
    )
    m.add_argument(
        "--rotary",
        choices=O.choices("rotary"),
        default=O.default("rotary"),
        help="pre-RoPE hook_q/k/v (study, default) or post-RoPE hook_rot_q/k (Jin)",
    )


def texts_from_args(args):
    from drope_lens.data.texts import builtin_texts, load_hf_texts, load_text_file

    if args.text:
        return list(args.text)
    if args.texts_file:
        return load_text_file(args.texts_file)
    if args.hf_dataset:
        return load_hf_texts(
            args.hf_dataset, config=args.hf_config, split=args.hf_split, column=args.hf_column, n=args.n_texts
        )
    return builtin_texts(args.genre)


def models_from_args(args):
    """``[(role, model)]`` for the pair, or for one member with ``--only``."""
    if args.only == "rope":
        from drope_lens.loading import load_embedded, load_hooked

        print(f"Loading {'embedded RoPE model' if args.rope is None else args.rope} ...", file=sys.stderr)
        model = (
            load_embedded(dtype=args.dtype, device=args.device)
            if args.rope is None
            else load_hooked(args.rope, dtype=args.dtype, device=args.device)
        )
        return [("rope", model)]
    if args.only == "drope" and args.drope is not None:
        from drope_lens.loading import load_hooked

        return [("drope", load_hooked(args.drope, dtype=args.dtype, device=args.device))]
    pair = load_pair_from_args(args)
    return [(r, m) for r, m in pair.items() if args.only in (None, r)]
