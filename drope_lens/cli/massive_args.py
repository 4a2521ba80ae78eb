"""Options and inputs shared by ``drope-lens detect`` and ``drope-lens disrupt``: the pair (or one member), texts, λ."""

from __future__ import annotations

import argparse
import sys

from drope_lens.cli.common import add_batch_args, add_pair_texts_args, load_pair_from_args
from drope_lens.cli.fields import add_option
from drope_lens.options import Options


def add_massive_args(p: argparse.ArgumentParser, options: type[Options]) -> None:
    """The pair, texts (``--hf-dataset`` too), sizes, and the massive-value definition of ``options``
    (:class:`~drope_lens.options.MassiveOptions` or :class:`~drope_lens.options.DisruptionOptions`)."""
    g = add_pair_texts_args(
        p, "texts (detect default: all built-in texts; disrupt default: built-in 'eval' split)", genre=True
    )
    g.add_argument("--hf-dataset", metavar="NAME", help="Hugging Face dataset (needs `datasets` and network)")
    g.add_argument("--hf-config", help="dataset config, e.g. wikitext-2-raw-v1")
    g.add_argument("--hf-split", default="test")
    g.add_argument("--hf-column", default="text")
    g.add_argument("--n-texts", type=int, default=20, help="rows taken from --hf-dataset (default 20)")
    add_batch_args(g, max_length=512)
    m = p.add_argument_group("definition")
    add_option(m, options, "threshold", "λ")
    add_option(m, options, "scope", "mean over the layer's heads × d_head matrix (study, default) or per head")
    add_option(m, options, "rotary", "pre-RoPE hook_q/k/v (study, default) or post-RoPE hook_rot_q/k (Jin)")


def models_from_args(args):
    """``[(role, model)]`` for the pair, or for one member with ``--only``."""
    from drope_lens.cli.common import placement_kwargs

    common = dict(
        dtype=args.dtype, device=args.device, backend=getattr(args, "backend", None), **placement_kwargs(args)
    )
    if args.only == "rope":
        from drope_lens.loading import load_embedded, load_hooked

        print(f"Loading {'embedded RoPE model' if args.rope is None else args.rope} ...", file=sys.stderr)
        model = load_embedded(**common) if args.rope is None else load_hooked(args.rope, **common)
        return [("rope", model)]
    if args.only == "drope" and args.drope is not None:
        from drope_lens.loading import load_hooked

        return [("drope", load_hooked(args.drope, **common))]
    pair = load_pair_from_args(args)
    return [(r, m) for r, m in pair.items() if args.only in (None, r)]
