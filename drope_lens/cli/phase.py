"""``drope-lens phase``: phase metrics (sinks, BOS, entropy) and BOS-MLP / Q/K interventions, both models."""

from __future__ import annotations

import argparse
import sys
import time

from drope_lens.cli.common import add_model_args, add_output_args, command_options, emit_json, load_pair_from_args
from drope_lens.cli.lists import add_list_argument
from drope_lens.options import MeanReplacementOptions
from drope_lens.options import PhaseOptions as O

HELP = "attention sinks, BOS norm/ratio, entropy per layer; perplexity under BOS-MLP / Q/K ablation"


def add_parser(sub) -> None:
    from drope_lens.options import CONDITIONS, ROTARY_MODES

    p = sub.add_parser("phase", help=HELP, description=HELP + ". Runs on both models of the pair.")
    add_model_args(p)
    add_output_args(p)
    g = p.add_argument_group("texts (default: the built-in texts)")
    g.add_argument("--text", action="append", metavar="TEXT", help="a text (repeatable)")
    g.add_argument("--texts-file", metavar="PATH", help="UTF-8 file, one text per paragraph")
    g.add_argument("--genre", help="one genre of the built-in texts")
    g.add_argument("--max-length", type=int, help="truncate each text to this many tokens (BOS included)")
    g.add_argument("--batch-size", type=int, default=8)
    m = p.add_argument_group("metrics")
    m.add_argument(
        "--tau", type=float, default=O.default("tau"), help="sink-rate threshold, inclusive (default %(default)s)"
    )
    m.add_argument(
        "--gu-eps", type=float, default=O.default("gu_eps"), help="Gu et al. 2025 ε, strict (default %(default)s)"
    )
    m.add_argument(
        "--include-bos-row",
        action="store_true",
        help="count query row 0 in sink scores (the study did; default: excluded)",
    )
    m.add_argument(
        "--last-layer",
        choices=O.choices("last_layer"),
        default=O.default("last_layer"),
        help="last layer = raw residual (default) or final RMSNorm output (study, HF hidden_states[-1])",
    )
    m.add_argument(
        "--attention",
        choices=O.choices("attention"),
        default=O.default("attention"),
        help="native hook_pattern (default) or the study's manual pre-RoPE Q/K softmax (bug B1)",
    )
    c = p.add_argument_group("interventions")
    add_list_argument(
        c,
        "--conditions",
        default=list(CONDITIONS),
        help=f"comma-separated subset of {','.join(CONDITIONS)} (default: all)",
    )
    c.add_argument("--profile-only", action="store_true", help="no interventions, no perplexity")
    c.add_argument("--bos-layer", type=int, help="BOS-MLP layer (default: the spike layer by --spike-rule)")
    c.add_argument(
        "--spike-rule",
        choices=O.choices("spike_rule"),
        default=O.default("spike_rule"),
        help="spike layer for the ablation: arg-max of mean BOS ratio (study code, default) "
        "or first layer with ratio > 2 (study prose)",
    )
    c.add_argument("--bos-mode", choices=O.choices("bos_mode"), default=O.default("bos_mode"))
    c.add_argument(
        "--study-compatible",
        action="store_true",
        help="BOS-MLP hook hits index 0 of every forward call (the study's bug B3)",
    )
    c.add_argument(
        "--qk-threshold",
        type=float,
        help="Q/K mean replacement gate: only dims with norm > X x the head mean "
        "(the study's Exp-4 J-B used 5); default: always top-1 (J-A)",
    )
    c.add_argument(
        "--qk-rotary",
        choices=ROTARY_MODES,
        default=MeanReplacementOptions.default("rotary"),
        help="Q/K mean replacement on pre-RoPE hook_q/k (study) or post-RoPE hook_rot_q/k (Jin)",
    )
    c.add_argument(
        "--profile-conditions", action="store_true", help="also compute the phase profile under each intervention"
    )
    p.add_argument("--per-text", action="store_true", help="include per-text arrays in --json")
    p.set_defaults(func=run, build_options=options_from_args)


def qk_options(args: argparse.Namespace) -> MeanReplacementOptions:
    """The ``qk`` condition's mean replacement of ``--qk-rotary`` / ``--qk-threshold``."""
    return MeanReplacementOptions(rotary=args.qk_rotary, threshold=args.qk_threshold)


def options_from_args(args: argparse.Namespace) -> O:
    qk_options(args)  # refuse bad --qk-* values before any model code too
    return O(
        tau=args.tau,
        gu_eps=args.gu_eps,
        include_bos_row=args.include_bos_row,
        last_layer=args.last_layer,
        attention=args.attention,
        conditions=() if args.profile_only else tuple(args.conditions),
        spike_rule=args.spike_rule,
        bos_mode=args.bos_mode,
        study_compatible=args.study_compatible,
        profile_conditions=args.profile_conditions,
    )


def _texts(args) -> list[str]:
    if args.text:
        return list(args.text)
    from drope_lens.data.texts import builtin_texts, load_text_file

    if args.texts_file:
        return load_text_file(args.texts_file)
    return builtin_texts(args.genre)


def run(args: argparse.Namespace) -> int:
    from drope_lens.analysis.interventions import phase_experiment

    conditions = command_options(args).conditions
    t0 = time.perf_counter()
    texts = _texts(args)
    pair = load_pair_from_args(args)
    out = {
        "n_texts": len(texts),
        "options": {
            k: getattr(args, k)
            for k in (
                "tau",
                "gu_eps",
                "include_bos_row",
                "last_layer",
                "attention",
                "spike_rule",
                "bos_mode",
                "study_compatible",
                "qk_threshold",
                "qk_rotary",
                "max_length",
            )
        },
        "conditions": list(conditions),
        "models": {},
    }
    for role, model in pair.items():
        print(f"[{role}] phase metrics ...", file=sys.stderr)
        exp = phase_experiment(
            model,
            texts,
            command_options(args),
            bos_layer=args.bos_layer,
            qk_kwargs=qk_options(args),
            batch_size=args.batch_size,
            max_length=args.max_length,
            progress=True,
        )
        out["models"][role] = {"label": pair.labels[role], **exp.to_dict(per_text=args.per_text)}
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    _print(out)
    emit_json(args, out)
    return 0


def _fmt(x, nd=4) -> str:
    return "-" if x is None else (f"{x:.{nd}g}" if isinstance(x, float) else str(x))


def _print(out: dict) -> None:
    o = out["options"]
    print(
        f"{out['n_texts']} texts; attention={o['attention']}, tau={o['tau']} (>=), "
        f"BOS row {'included' if o['include_bos_row'] else 'excluded'}, last layer={o['last_layer']}"
    )
    for role, e in out["models"].items():
        s = e["baseline"]["summary"]
        print(f"\n[{role}] {e['label']}")
        print(
            f"  mean sink rate {_fmt(s['mean_sink_rate'])}   Gu Sink^eps {_fmt(s['gu_sink'])}   "
            f"(uniform-attention sink score {_fmt(s['uniform_sink_score'])})"
        )
        print(
            f"  BOS spike layer: argmax {s['spike_layer_argmax']} (ratio {_fmt(s['max_bos_ratio'])}), "
            f"first > {s['spike_threshold']}: {s['spike_layer_first_above']}   "
            f"peak BOS norm {_fmt(s['peak_bos_norm'])} @ {s['peak_bos_layer']}"
        )
        print(
            f"  min entropy (sigma^2) {_fmt(s['min_entropy_sq'])} @ {s['min_entropy_sq_layer']}   "
            f"min entropy (sigma, normalised) {_fmt(s['min_entropy_norm'])} @ {s['min_entropy_norm_layer']}"
        )
        if e["conditions"]:
            base = (e["conditions"].get("baseline") or {}).get("ppl") or {}
            print(f"  perplexity (BOS-MLP at layer {e['bos_layer']}, rule {e['spike_rule']}, mode {e['bos_mode']}):")
            for name, c in e["conditions"].items():
                ppl = (c.get("ppl") or {}).get("ppl")
                ratio = f"  x{ppl / base['ppl']:.3g}" if ppl and base.get("ppl") else ""
                print(f"    {name:<9} {_fmt(ppl, 6)}{ratio}")
        lay = e["baseline"]["layers"]
        print("  layer  sink_rate  bos_ratio   entropy_sq")
        for i in range(len(lay["sink_rate"])):
            print(f"  {i:>5}  {lay['sink_rate'][i]:>9.3f}  {lay['bos_ratio'][i]:>9.3g}  {lay['entropy_sq'][i]:>11.4g}")
    print(f"\n{out['wall_s']} s", file=sys.stderr)
