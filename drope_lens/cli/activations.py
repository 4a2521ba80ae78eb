"""``drope-lens activations`` (residual massive activations, Sun et al.) and ``drope-lens extended``
(the study's Exp 5–9 done right)."""

from __future__ import annotations

import argparse

from drope_lens.cli.common import add_batch_args, add_pair_texts_args, batch_kwargs, emit_json, given_texts

ACT_HELP = "residual-stream massive activations (top-k |resid_post| vs layer median), set-to-zero/mean PPL"
EXT_HELP = "the study's Exp 5-9: BOS write, layer ablations, head classes, attention/MLP norms and fractions"


def add_parser(sub) -> None:
    a = sub.add_parser("activations", help=ACT_HELP, description=ACT_HELP + ".")
    _common_args(a)
    a.add_argument("--top-k", type=int, default=5, help="entries kept per text and layer (default 5)")
    a.add_argument(
        "--ratio",
        type=float,
        default=1000.0,
        help="set-to-zero/mean targets entries above RATIO × the layer median (default 1000)",
    )
    a.add_argument("--layer", type=int, help="intervention layer (default: first layer above --ratio)")
    a.add_argument("--no-ppl", action="store_true", help="skip the set-to-zero / set-to-mean perplexities")
    a.add_argument("--figure", metavar="PNG", help="save the top-1 vs median by layer figure here")
    a.set_defaults(func=run_activations)

    e = sub.add_parser("extended", help=EXT_HELP, description=EXT_HELP + ".")
    _common_args(e)
    e.add_argument("--ablation-layer", type=int, default=1, help="layer of the Exp 6 ablations (default 1)")
    e.set_defaults(func=run_ext)


def _common_args(p: argparse.ArgumentParser) -> None:
    g = add_pair_texts_args(p, "texts (default: built-in 'identify' texts; perplexity on the 'eval' texts)")
    add_batch_args(g, max_length=256)


def _texts(args) -> tuple[list[str], list[str]]:
    """The texts measured and those perplexity is computed on (the same, when given)."""
    from drope_lens.data.texts import builtin_split

    if args.max_length < 2 or args.batch_size < 1:
        raise ValueError("--max-length must be >= 2 and --batch-size >= 1.")
    texts = given_texts(args)
    if texts is not None:
        return texts, texts
    split = builtin_split()
    return split["identify"], split["eval"][::2]


def _models(args):
    from drope_lens.cli.massive_args import models_from_args as models

    return models(args)


def run_activations(args: argparse.Namespace) -> int:
    from drope_lens.analysis.residual import (
        compare_residual_massive,
        residual_intervention,
        residual_massive_activations,
    )

    if args.top_k < 1:
        raise ValueError("--top-k must be >= 1.")
    texts, ppl_texts = _texts(args)
    out: dict = {"command": "activations", "n_texts": len(texts), "models": {}}
    results = {}
    for role, model in _models(args):
        res = residual_massive_activations(model, texts, top_k=args.top_k, progress=True, **batch_kwargs(args))
        results[role] = res
        out["models"][role] = {"result": res.to_dict()}
        s = res.summary()
        print(
            f"[{role}] peak layer {s['peak_layer']}: top-1 |h| {s['peak_top1_mean']:,.1f} = "
            f"{s['peak_ratio_mean']:,.0f}× the median {s['peak_median_mean']:.3g}, channel {s['peak_channel']}, "
            f"at BOS in {s['peak_top1_at_bos']:.0%} of texts"
        )
        st = res.layer_stats()
        print("  layer     top-1    median     ratio  >100×  >1000×  ch  at-BOS")
        ch = res.top1_channel()
        for li in range(res.n_layers):
            print(
                f"  {li:5d} {st['top1_mean'][li]:9.1f} {st['median_mean'][li]:9.3f} {st['ratio_mean'][li]:9.0f} "
                f"{st['n_over_100_mean'][li]:6.1f} {st['n_over_1000_mean'][li]:7.1f} {ch[li]:4d} "
                f"{st['top1_at_bos'][li]:6.0%}"
            )
        if not args.no_ppl:
            try:
                iv = residual_intervention(
                    model,
                    ppl_texts,
                    res,
                    layer=args.layer,
                    ratio=args.ratio,
                    **batch_kwargs(args),
                )
            except ValueError as exc:
                print(f"  no intervention: {exc}")
            else:
                out["models"][role]["intervention"] = iv.to_dict()
                p = {k: v.ppl for k, v in iv.ppl.items()}
                print(
                    f"  layer {iv.layer}, channels {iv.channels}: PPL baseline {p['baseline']:.3f}, "
                    f"set to zero {p['zero']:.3f}, set to mean {p['mean']:.3f}"
                )
    if len(results) == 2:
        c = compare_residual_massive(results["rope"], results["drope"])
        out["comparison"] = c.to_dict()
        print(
            f"massive layers (>100×) shared: {len(c.shared_layers)}, Jaccard {c.layer_jaccard:.2f}, "
            f"same top-1 channel in {len(c.same_channel_layers)}"
        )
    if args.figure:
        from drope_lens.views.extended_figures import plot_residual_massive
        from drope_lens.views.figures import save_figure

        stats = {r.model: r.layer_stats() for r in results.values()}
        save_figure(
            plot_residual_massive(
                {k: v["top1_mean"] for k, v in stats.items()}, {k: v["median_mean"] for k, v in stats.items()}
            ),
            args.figure,
        )
        print(f"wrote {args.figure}")
    emit_json(args, out)
    return 0


def run_ext(args: argparse.Namespace) -> int:
    from drope_lens.analysis.extended import run_extended

    texts, ppl_texts = _texts(args)
    out: dict = {"command": "extended", "n_texts": len(texts), "models": {}}
    for role, model in _models(args):
        res = run_extended(
            model,
            texts,
            ppl_texts,
            ablation_layer=args.ablation_layer,
            **batch_kwargs(args),
        )
        out["models"][role] = res.to_dict()
        print(f"[{role}]")
        print(res.to_dataframe().to_string(index=False))
    emit_json(args, out)
    return 0
