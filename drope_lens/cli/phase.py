"""``drope-lens phase``: phase metrics (sinks, BOS, entropy) and BOS-MLP / Q/K interventions, both models."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from drope_lens.cli.common import (
    add_batch_args,
    add_pair_args,
    add_texts_args,
    batch_kwargs,
    command_options,
    emit_json,
    load_pair_from_args,
    texts_from_args,
)
from drope_lens.cli.fields import add_option, options_from_args
from drope_lens.options import MeanReplacementOptions
from drope_lens.options import PhaseOptions as O

HELP = "attention sinks, BOS norm/ratio, entropy per layer; perplexity under BOS-MLP / Q/K ablation"


def add_parser(sub) -> None:
    from drope_lens.options import CONDITIONS

    p = sub.add_parser("phase", help=HELP, description=HELP + ". Runs on both models of the pair.")
    add_pair_args(p)
    add_batch_args(add_texts_args(p, "texts (default: the built-in texts)", genre=True), max_length=None)
    m = p.add_argument_group("metrics")
    add_option(m, O, "tau", "sink-rate threshold, inclusive")
    add_option(m, O, "gu_eps", "Gu et al. 2025 ε, strict")
    add_option(m, O, "include_bos_row", "count query row 0 in sink scores (the study did; default: excluded)")
    add_option(
        m, O, "last_layer", "last layer = raw residual (default) or final RMSNorm output (study, HF hidden_states[-1])"
    )
    add_option(m, O, "attention", "native hook_pattern (default) or the study's manual pre-RoPE Q/K softmax (bug B1)")
    c = p.add_argument_group("interventions")
    add_option(c, O, "conditions", f"comma-separated subset of {','.join(CONDITIONS)} (default: all)")
    c.add_argument("--profile-only", action="store_true", help="no interventions, no perplexity")
    c.add_argument("--bos-layer", type=int, help="BOS-MLP layer (default: the spike layer by --spike-rule)")
    add_option(
        c,
        O,
        "spike_rule",
        "spike layer for the ablation: arg-max of mean BOS ratio (study code, default) "
        "or first layer with ratio > 2 (study prose)",
    )
    add_option(c, O, "bos_mode", "BOS-MLP ablation at BOS: zero, or the mean MLP output over the other real positions")
    add_option(c, O, "study_compatible", "BOS-MLP hook hits index 0 of every forward call (the study's bug B3)")
    M = MeanReplacementOptions
    add_option(
        c,
        M,
        "threshold",
        "Q/K mean replacement gate: only dims with norm > X x the head mean "
        "(the study's Exp-4 J-B used 5); default: always top-1 (J-A)",
        flag="--qk-threshold",
        dest="qk_threshold",
    )
    add_option(
        c,
        M,
        "rotary",
        "Q/K mean replacement on pre-RoPE hook_q/k (study) or post-RoPE hook_rot_q/k (Jin)",
        flag="--qk-rotary",
        dest="qk_rotary",
    )
    add_option(c, O, "profile_conditions", "also compute the phase profile under each intervention")
    p.add_argument("--per-text", action="store_true", help="include per-text arrays in --json")
    p.set_defaults(func=run, build_options=build_options)


def qk_options(args: argparse.Namespace) -> MeanReplacementOptions:
    """The ``qk`` condition's mean replacement of ``--qk-rotary`` / ``--qk-threshold``."""
    return MeanReplacementOptions(rotary=args.qk_rotary, threshold=args.qk_threshold)


def build_options(args: argparse.Namespace) -> O:
    """The :class:`~drope_lens.options.PhaseOptions` of the parsed arguments (``--qk-*`` checked too)."""
    qk_options(args)  # refuse bad --qk-* values before any model code too
    return options_from_args(O, args, conditions=() if args.profile_only else tuple(args.conditions))


def run(args: argparse.Namespace) -> int:
    from drope_lens.analysis.interventions import phase_experiment

    conditions = command_options(args).conditions
    t0 = time.perf_counter()
    texts = texts_from_args(args)
    pair = load_pair_from_args(args)
    out: dict[str, Any] = {
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
            progress=True,
            **batch_kwargs(args),
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
