"""The same analyses on both backends: the parity table (HookedTransformer vs TransformerBridge).

``python -m benchmarks.backend_parity`` loads the embedded pair on each backend (TransformerLens 3.x,
where both exist) and prints, per analysis and model, the largest relative difference between the two
(``identical`` where the result is an integer or a token sequence). ``tests/loading/test_backend_parity.py``
asserts the same rows against the issue's tolerances: massive counts and greedy generations identical;
perplexities, disruption, sink rates and BOS metrics within 1e-5 relative; option log-probs within 1e-4 nats.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

#: Each row's tolerance: ``("rel", x)`` max relative difference, ``("abs", x)`` max absolute, ``("equal", 0)``.
TOLERANCE = {
    "massive counts (Q/K/V, per text × layer)": ("equal", 0.0),
    "perplexity": ("rel", 1e-5),
    "disruption PPLs (base, massive, 2 random seeds)": ("rel", 1e-5),
    "sink score (per text × layer × head)": ("rel", 1e-5),
    "BOS norm and ratio (per text × layer)": ("rel", 1e-5),
    "option log-probs (nats)": ("abs", 1e-4),
    "greedy generation (16 tokens × 3 prompts)": ("equal", 0.0),
}


@dataclass
class ParityRow:
    analysis: str
    role: str
    difference: float  # max relative (or absolute, per TOLERANCE) difference; 0 = identical
    n_values: int

    @property
    def ok(self) -> bool:
        kind, tol = TOLERANCE[self.analysis]
        return self.difference == 0 if kind == "equal" else self.difference <= tol

    def cell(self) -> str:
        kind, _ = TOLERANCE[self.analysis]
        if kind == "equal":
            return "identical" if self.difference == 0 else f"{int(self.difference)} differ"
        return f"{self.difference:.1e}"


def _rel(a: Any, b: Any) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    if not both.any():
        return 0.0
    scale = np.maximum(np.abs(a[both]), np.abs(b[both]))
    return float(np.max(np.abs(a[both] - b[both]) / np.where(scale > 0, scale, 1.0)))


def parity_rows(hooked: Any, bridge: Any, texts: Sequence[str], *, max_length: int = 128) -> list[ParityRow]:
    """Every analysis of the table on both pairs (``hooked``/``bridge``: :class:`~drope_lens.loading.ModelPair`)."""
    from drope_lens.analysis import detect_massive, perplexity, phase_profile, run_disruption
    from drope_lens.options import DisruptionOptions
    from drope_lens.tasks.scoring import greedy_generate, option_logprobs, option_token_ids

    texts = list(texts)
    rows: list[ParityRow] = []
    for role in ("rope", "drope"):
        h, b = getattr(hooked, role), getattr(bridge, role)
        mh, mb = (detect_massive(m, texts, max_length=max_length) for m in (h, b))
        n_diff = sum(int((mh.counts(t) != mb.counts(t)).sum()) for t in ("q", "k", "v"))
        rows.append(ParityRow("massive counts (Q/K/V, per text × layer)", role, n_diff, 3 * mh.counts("q").numel()))
        ph, pb = (perplexity(m, texts, max_length=max_length) for m in (h, b))
        rows.append(ParityRow("perplexity", role, _rel(ph.per_text_nll + [ph.ppl], pb.per_text_nll + [pb.ppl]), 1))
        opts = DisruptionOptions(n_seeds=2)
        dh, db = (
            run_disruption(m, opts, identify_texts=texts[:2], eval_texts=texts[2:], max_length=max_length)
            for m in (h, b)
        )
        ppls = lambda d: [d.base_ppl, d.massive_ppl, *d.random_ppls]  # noqa: E731
        rows.append(ParityRow("disruption PPLs (base, massive, 2 random seeds)", role, _rel(ppls(dh), ppls(db)), 4))
        fh, fb = (phase_profile(m, texts, max_length=max_length) for m in (h, b))
        rows.append(
            ParityRow(
                "sink score (per text × layer × head)",
                role,
                _rel(fh.sink_scores_per_text, fb.sink_scores_per_text),
                fh.sink_scores_per_text.size,
            )
        )
        bos = lambda f: np.concatenate([f.bos_norm_per_text.ravel(), f.bos_ratio_per_text.ravel()])  # noqa: E731
        rows.append(ParityRow("BOS norm and ratio (per text × layer)", role, _rel(bos(fh), bos(fb)), bos(fh).size))
        prompts = [f"Question: {t.split('.')[0]}. Is this true? Answer:" for t in texts]
        batch = hooked.encode(prompts)
        options = option_token_ids(hooked.tokenizer, ["Yes", "No", "Maybe not"])
        lh, lb = (option_logprobs(m, batch, options) for m in (h, b))
        rows.append(ParityRow("option log-probs (nats)", role, float((lh - lb).abs().max()), lh.numel()))
        differ = 0
        for prompt in texts[:3]:
            ids = hooked.encode(prompt, max_length=48).tokens[0]
            gh, gb = (greedy_generate(m, ids, 16, stop_at_eos=False)[0] for m in (h, b))
            differ += sum(x != y for x, y in zip(gh, gb, strict=True)) + abs(len(gh) - len(gb))
        rows.append(ParityRow("greedy generation (16 tokens × 3 prompts)", role, differ, 48))
    return rows


def load_pairs(dtype: str = "float32") -> tuple[Any, Any]:
    from drope_lens.loading import load_pair

    return load_pair(backend="hooked", dtype=dtype), load_pair(backend="bridge", dtype=dtype)


def default_texts(n: int = 6) -> list[str]:
    from drope_lens.data.texts import builtin_texts

    return builtin_texts()[:n]


def markdown(rows: Sequence[ParityRow]) -> str:
    table = {(r.analysis, r.role): r for r in rows}
    lines = ["| analysis | RoPE: hooked vs bridge | NoPE twin: hooked vs bridge | tolerance |", "|---|---|---|---|"]
    for analysis, (kind, tol) in TOLERANCE.items():
        cells = [table[(analysis, role)].cell() if (analysis, role) in table else "—" for role in ("rope", "drope")]
        limit = "identical" if kind == "equal" else f"≤ {tol:g} {'relative' if kind == 'rel' else 'nats'}"
        lines.append(f"| {analysis} | {cells[0]} | {cells[1]} | {limit} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--n-texts", type=int, default=6)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    hooked, bridge = load_pairs()
    rows = parity_rows(hooked, bridge, default_texts(args.n_texts))
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) | {"ok": r.ok} for r in rows], f, indent=2)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
