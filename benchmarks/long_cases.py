"""Benchmark cases of the long-context work (issue 13): fast attention, streamed sinks, Exp 10.

Registered into :data:`benchmarks.cases.CASE_BUILDERS`; :data:`PLANS` gives :mod:`benchmarks.run` the
jobs (texts × tokens) of each case. Each case times the drope_lens analysis with the fast path (the
default), the same analysis on TransformerLens's explicit attention (``dl.explicit_attention``, what
drope_lens did before), and the bare Hugging Face sdpa forward of the same tokens:

* ``long_detection``  detection (massive Q/K/V) on 1 × 4096 tokens (target: ≤ 1.25× bare HF sdpa);
* ``long_phase``      phase profile (streamed sinks) on 1 × 4096 and 1 × 8192 tokens, with peak
                      memory (target: linear in T; the hook_pattern path is quadratic);
* ``short_ppl``       plain perplexity on five texts (target: at least as fast as HF sdpa);
* ``jin``             Jin-style Q/K mean replacement perplexity vs a plain-HF Jin-style
                      implementation (q_proj/k_proj output hooks, batch 1; target: ≥ as fast);
* ``context``         the context experiment's wall time on the pair (512 … 2048 by default).
"""

from __future__ import annotations

from typing import Sequence

import torch

from benchmarks.cases import (
    CASE_BUILDERS,
    CaseSpec,
    Models,
    Section,
    Workload,
    _hf_roles,
    each_hf,
    each_role,
    hf_forwards,
    tl_forwards,
)


def _explicit(models: Models, roles: Sequence[str]):
    import drope_lens as dl

    return dl.explicit_attention(*[models.tl[r] for r in roles])


def _with_explicit(models, roles, fn):
    def run():
        with _explicit(models, roles):
            fn()

    return run


def case_long_detection(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from drope_lens.analysis.massive import detect_massive

    ours = each_role(models, roles, lambda m: detect_massive(m, wl.batch, batch_size=wl.batch_size))
    hr = _hf_roles(models, roles)
    secs = [
        Section("drope_lens", ours),
        Section("drope_lens_explicit", _with_explicit(models, roles, ours)),
        Section("tl_forward_nologits", tl_forwards(models, wl, roles, logits=False)),
        Section("hf_forward", hf_forwards(models, wl, hr)),
        Section("hf_forward_nologits", hf_forwards(models, wl, hr, logits=False)),
    ]
    return CaseSpec("long_detection", secs, analysis_needs_logits=False, label="fast attention vs explicit vs HF sdpa")


def case_long_phase(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from drope_lens.analysis.profile_pass import phase_profile

    ours = each_role(models, roles, lambda m: phase_profile(m, wl.batch, batch_size=wl.batch_size))
    pattern_path = each_role(
        models, roles, lambda m: phase_profile(m, wl.batch, batch_size=wl.batch_size, sinks_from="pattern")
    )

    hr = _hf_roles(models, roles)
    secs = [
        Section("drope_lens", ours),
        Section("drope_lens_pattern", pattern_path, max_repeat=1),
        Section("tl_forward_nologits", tl_forwards(models, wl, roles, logits=False)),
        Section("hf_forward_nologits", hf_forwards(models, wl, hr, logits=False)),
    ]
    return CaseSpec(
        "long_phase", secs, analysis_needs_logits=False, label="streamed sinks vs hook_pattern; peak memory vs T"
    )


def _ppl_sections(models: Models, wl: Workload, roles: Sequence[str], ours) -> list[Section]:
    """A perplexity case's sections: ours (fast and explicit attention), bare TL and HF forwards with logits."""
    return [
        Section("drope_lens", ours),
        Section("drope_lens_explicit", _with_explicit(models, roles, ours)),
        Section("tl_forward", tl_forwards(models, wl, roles, logits=True)),
        Section("hf_forward", hf_forwards(models, wl, _hf_roles(models, roles))),
    ]


def case_short_ppl(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from drope_lens.analysis.perplexity import perplexity

    ours = each_role(models, roles, lambda m: perplexity(m, wl.batch, batch_size=wl.batch_size))
    secs = _ppl_sections(models, wl, roles, ours)
    return CaseSpec("short_ppl", secs, analysis_needs_logits=True, label="plain perplexity")


def jin_style_hf(hf, rows: Sequence[torch.Tensor], k: int = 1) -> float:
    """Jin-style mean replacement done the plain-HF way: batch 1, hooks on q_proj/k_proj outputs.

    Per text and head, the ``k`` dims with the largest L2 norm over tokens are replaced at every
    position by their mean over tokens (pre-RoPE, the study's J-A). Returns the perplexity.
    """
    cfg = hf.config
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    def replace(module, args, out):
        b, t, width = out.shape
        x = out.view(b, t, width // d_head, d_head)
        norm = x.float().norm(dim=1)  # [b, head, d]
        top = norm.topk(k, dim=-1).indices  # [b, head, k]
        mean = x.float().mean(dim=1)  # [b, head, d]
        sel = torch.zeros_like(norm, dtype=torch.bool).scatter_(-1, top, True)  # [b, head, d]
        y = torch.where(sel[:, None], mean[:, None].to(x.dtype).expand_as(x), x)
        return y.reshape(b, t, width)

    handles = []
    for layer in hf.model.layers:
        handles.append(layer.self_attn.q_proj.register_forward_hook(replace))
        handles.append(layer.self_attn.k_proj.register_forward_hook(replace))
    nll, n = 0.0, 0
    try:
        with torch.no_grad():
            for ids in rows:
                ids = ids[None].to(hf.device)
                logits = hf(input_ids=ids).logits[0, :-1].float()
                nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum"))
                n += ids.shape[1] - 1
    finally:
        for h in handles:
            h.remove()
    return float(torch.tensor(nll / n).exp())


def case_jin(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from drope_lens.analysis.perplexity import perplexity
    from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks

    def jin_ppl(m):
        perplexity(m, wl.batch, batch_size=wl.batch_size, fwd_hooks=qk_mean_replacement_hooks(m))

    ours = each_role(models, roles, jin_ppl)
    peer = each_hf(models, roles, lambda hf: jin_style_hf(hf, wl.rows()))
    secs = _ppl_sections(models, wl, roles, ours) + [Section("peer_jin_hf", peer)]
    return CaseSpec(
        "jin", secs, analysis_needs_logits=True, label="Q/K mean replacement (J-A) PPL vs plain-HF Jin-style"
    )


def case_context(models: Models, wl: Workload, roles: Sequence[str], opts: dict) -> CaseSpec:
    from drope_lens.analysis.context import context_experiment

    lengths = [int(x) for x in str(opts.get("context_lengths") or "512,1024,2048").split(",") if x]

    ours = each_role(models, roles, lambda m: context_experiment(m, lengths, n_per_depth=1, batch_size=3))

    return CaseSpec(
        "context",
        [Section("drope_lens", ours, max_repeat=1)],
        analysis_needs_logits=True,
        label="context experiment, lengths " + ",".join(map(str, lengths)),
        meta={"workload": "lengths " + ",".join(map(str, lengths))},
    )


CASE_BUILDERS.update(
    {
        "long_detection": case_long_detection,
        "long_phase": case_long_phase,
        "short_ppl": case_short_ppl,
        "jin": case_jin,
        "context": case_context,
    }
)


def plans(args) -> dict[str, list[dict]]:
    """The jobs of each case: ``case -> [job]`` (one child process per job)."""
    long_t = [int(x) for x in str(getattr(args, "long_lengths", "4096,8192")).split(",") if x]
    pattern_max = int(getattr(args, "long_pattern_max", 4096))
    return {
        "long_detection": [{"case": "long_detection", "n_texts": 1, "seq_len": long_t[0], "repeat": 1}],
        "long_phase": [
            {
                "case": "long_phase",
                "as": "long_phase",
                "n_texts": 1,
                "seq_len": L,
                "repeat": 1,
                **({} if L <= pattern_max else {"only_sections": _NO_PATTERN}),
            }
            for L in long_t
        ],
        "short_ppl": [{"case": "short_ppl", "n_texts": 5, "seq_len": args.seq_len}],
        "jin": [{"case": "jin", "n_texts": 5, "seq_len": args.seq_len}],
        "context": [
            {
                "case": "context",
                "n_texts": 1,
                "seq_len": 16,
                "repeat": 1,
                "context_lengths": str(getattr(args, "context_lengths", "512,1024,2048")),
            }
        ],
    }


_NO_PATTERN = "drope_lens,tl_forward_nologits,hf_forward_nologits"  # long_phase past --long-pattern-max
LONG_CASES = ("long_detection", "long_phase", "short_ppl", "jin", "context")


def render_long_table(records: list[dict]) -> str:
    """Markdown rows of the long-context cases: every section's best time and peak memory."""
    rows = [r for r in records if r.get("case") in LONG_CASES]
    if not rows:
        return ""
    out = ["| case | workload | section | time s | peak MB | ÷ hf_forward(_nologits) |", "|---|---|---|---|---|---|"]
    for r in rows:
        secs = r.get("sections") or {}
        ref = secs.get("hf_forward_nologits") or secs.get("hf_forward") or {}
        for name, sec in secs.items():
            t, m = sec.get("time_s"), sec.get("peak_delta_mb")
            ratio = (t / ref["time_s"]) if (t and ref.get("time_s")) else None
            out.append(
                f"| {r['case']} | {r.get('workload', '?')} | {name} | "
                f"{'-' if t is None else f'{t:.3g}'} | {'-' if m is None else f'{m:.0f}'} | "
                f"{'-' if ratio is None else f'{ratio:.2f}×'} |"
            )
        if r.get("status") != "ok":
            out.append(f"| {r['case']} | {r.get('workload', '?')} | error | {r.get('reason', '')[:80]} | | |")
    return "\n".join(out)
