"""``drope-lens detect`` (massive Q/K/V values) and ``drope-lens disrupt`` (zeroing vs random controls)."""

from __future__ import annotations

import argparse
import sys

from drope_lens.cli.common import add_model_args, add_output_args, emit_json, load_pair_from_args

DETECT_HELP = "count massive Q/K/V channels per layer (token-L2 > λ × layer mean) on both models"
DISRUPT_HELP = "perplexity with massive Q/K channels zeroed vs seeded random controls; M-R, t-tests"


def add_parser(sub) -> None:
    d = sub.add_parser("detect", help=DETECT_HELP, description=DETECT_HELP + ".")
    _common(d)
    d.add_argument("--tensors", default="q,k,v", help="comma-separated subset of q,k,v (default: all)")
    d.add_argument("--top", type=int, default=20, help="top channels listed per tensor in --json")
    d.add_argument("--context-length", type=int, help="context for rotary bands (default: n_ctx)")
    d.set_defaults(func=run_detect)

    r = sub.add_parser("disrupt", help=DISRUPT_HELP, description=DISRUPT_HELP + ".")
    _common(r)
    r.add_argument("--identify-file", metavar="PATH",
                   help="identification texts (one per paragraph); default: built-in 'identify' split")
    r.add_argument("--n-seeds", type=int, default=10, help="random-control seeds (default 10)")
    r.add_argument("--first-seed", type=int, default=42, help="seeds are FIRST..FIRST+N-1 (default 42, the study)")
    r.add_argument("--aggregate", choices=["mean_norm", "pooled", "union"], default="mean_norm",
                   help="how identification texts are combined (default: threshold the text-mean M, the study)")
    r.add_argument("--eval-on-identify", action="store_true",
                   help="evaluate on the identification texts (the study's quirk; default: disjoint texts)")
    r.add_argument("--allow-overlap", action="store_true",
                   help="random control may include massive channels (the study; default: excluded)")
    r.add_argument("--welch", action="store_true", help="Welch instead of Student t-test between models")
    r.set_defaults(func=run_disrupt)


def _common(p: argparse.ArgumentParser) -> None:
    add_model_args(p)
    add_output_args(p)
    p.add_argument("--only", choices=["rope", "drope"], help="run one model of the pair only")
    g = p.add_argument_group("texts (detect default: all built-in texts; disrupt default: built-in 'eval' split)")
    g.add_argument("--text", action="append", metavar="TEXT", help="a text (repeatable)")
    g.add_argument("--texts-file", metavar="PATH", help="UTF-8 file, one text per paragraph")
    g.add_argument("--genre", help="one genre of the built-in texts")
    g.add_argument("--hf-dataset", metavar="NAME", help="Hugging Face dataset (needs `datasets` and network)")
    g.add_argument("--hf-config", help="dataset config, e.g. wikitext-2-raw-v1")
    g.add_argument("--hf-split", default="test")
    g.add_argument("--hf-column", default="text")
    g.add_argument("--n-texts", type=int, default=20, help="rows taken from --hf-dataset (default 20)")
    g.add_argument("--max-length", type=int, default=512,
                   help="truncate each text to this many tokens, BOS included (default 512)")
    g.add_argument("--batch-size", type=int, default=8)
    m = p.add_argument_group("definition")
    m.add_argument("--threshold", type=float, default=5.0, help="λ (default 5.0)")
    m.add_argument("--scope", choices=["layer", "head"], default="layer",
                   help="mean over the layer's heads × d_head matrix (study, default) or per head")
    m.add_argument("--rotary", choices=["pre", "post"], default="pre",
                   help="pre-RoPE hook_q/k/v (study, default) or post-RoPE hook_rot_q/k (Jin)")


def _texts(args):
    from drope_lens.data.texts import builtin_texts, load_hf_texts, load_text_file

    if args.text:
        return list(args.text)
    if args.texts_file:
        return load_text_file(args.texts_file)
    if args.hf_dataset:
        return load_hf_texts(args.hf_dataset, config=args.hf_config, split=args.hf_split,
                             column=args.hf_column, n=args.n_texts)
    return builtin_texts(args.genre)


def _models(args):
    """``[(role, model)]`` for the pair, or for one member with ``--only``."""
    if args.only == "rope":
        from drope_lens.loading import load_embedded, load_hooked

        print(f"Loading {'embedded RoPE model' if args.rope is None else args.rope} ...", file=sys.stderr)
        model = (load_embedded(dtype=args.dtype, device=args.device) if args.rope is None
                 else load_hooked(args.rope, dtype=args.dtype, device=args.device))
        return [("rope", model)]
    if args.only == "drope" and args.drope is not None:
        from drope_lens.loading import load_hooked

        return [("drope", load_hooked(args.drope, dtype=args.dtype, device=args.device))]
    pair = load_pair_from_args(args)
    return [(r, m) for r, m in pair.items() if args.only in (None, r)]


def run_detect(args: argparse.Namespace) -> int:
    from drope_lens.analysis.massive import detect_massive

    texts = _texts(args)
    tensors = tuple(t.strip() for t in args.tensors.split(",") if t.strip())
    out: dict = {"command": "detect", "n_texts": len(texts), "models": {}}
    for role, model in _models(args):
        res = detect_massive(model, texts, threshold=args.threshold, scope=args.scope, rotary=args.rotary,
                             tensors=tensors, batch_size=args.batch_size, max_length=args.max_length,
                             top=args.top, context_length=args.context_length, progress=True)
        out["models"][role] = res.to_dict()
        print(f"[{role}] {res.summary()}")
        _print_layers(res)
    if len(out["models"]) == 2:
        a, b = out["models"]["rope"]["tensors"], out["models"]["drope"]["tensors"]
        out["change_pct"] = {t: (100.0 * (b[t]["total_mean"] - a[t]["total_mean"]) / a[t]["total_mean"]
                                 if a[t]["total_mean"] else None) for t in a}
        print("change DroPE/NoPE vs RoPE: " + ", ".join(
            f"{t.upper()} {v:+.1f}%" if v is not None else f"{t.upper()} n/a" for t, v in out["change_pct"].items()))
    emit_json(args, out)
    return 0


def _print_layers(res) -> None:
    ts = res.tensors
    print("  layer " + " ".join(f"{t.upper():>7}" for t in ts))
    for layer in range(res.n_layers):
        print(f"  {layer:5d} " + " ".join(f"{float(res.per_layer_mean(t)[layer]):7.1f}" for t in ts))


def run_disrupt(args: argparse.Namespace) -> int:
    from drope_lens.analysis.disruption import compare_disruption, run_disruption
    from drope_lens.data.texts import load_text_file

    identify = load_text_file(args.identify_file) if args.identify_file else None
    has_eval = bool(args.text or args.texts_file or args.hf_dataset or args.genre)
    if args.eval_on_identify and has_eval:
        raise ValueError("--eval-on-identify evaluates on the identification texts; drop the eval text options.")
    eval_texts = _texts(args) if has_eval else None
    results = {}
    for role, model in _models(args):
        results[role] = run_disruption(
            model, identify_texts=identify, eval_texts=eval_texts, n_seeds=args.n_seeds,
            first_seed=args.first_seed, threshold=args.threshold, scope=args.scope, rotary=args.rotary,
            aggregate=args.aggregate, eval_on_identify=args.eval_on_identify,
            exclude_massive=not args.allow_overlap, batch_size=args.batch_size,
            max_length=args.max_length, progress=True,
        )
        print(f"[{role}] {results[role].summary()}")
    out: dict = {"command": "disrupt", "models": {r: x.to_dict() for r, x in results.items()}}
    if len(results) == 2:
        cmp = compare_disruption(results["rope"], results["drope"], equal_var=not args.welch)
        ind = cmp.independent()
        out.update(ratio_m_minus_r=cmp.ratio, independent_t=ind["t"], independent_p=ind["p"],
                   equal_var=ind["equal_var"])
        print(f"M-R ratio RoPE/DroPE = {cmp.ratio:.2f}; independent t = {ind['t']:.3g}, p = {ind['p']:.3g}")
    emit_json(args, out)
    return 0
