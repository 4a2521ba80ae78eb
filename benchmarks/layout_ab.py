#!/usr/bin/env python
"""Weight layouts side by side, in one process: bare forward, detection and KV-cache decoding (issue 25).

    python -m benchmarks.layout_ab                          # embedded SmolLM2-135M, 4 x 256 tokens, best of 5
    python -m benchmarks.layout_ab --repeat 7 --threads 2 --json layout_ab.json
    python -m benchmarks.layout_ab --model tiny --repeat 1  # seconds; what the test runs

Three variants of the same loaded model, timed interleaved (each round runs every variant once, in a
rotating order, so drift in machine load hits all of them alike; the best of ``--repeat`` rounds is kept):

* ``strided``: the code before issue 25. Matrix parameters are strided views of ``nn.Linear``-layout
  tensors (so ``safetensors``, ``.view(-1)``, ``parameters_to_vector`` fail on them) and the kernels turn
  each into the ``nn.Linear`` layout per call (``W.T.contiguous()``, ``rearrange``), which on that layout is
  itself a view: the old memory layout and the old per-call work.
* ``plain``: what drope_lens loads now. Plain contiguous parameters in TransformerLens's layout; the kernels
  multiply by them as they are (:mod:`drope_lens.loading.hooked.weights`: a transposed view, a batched
  product over heads), with no copy and no cache.
* ``plain+copy``: plain parameters with the per-call transform: TransformerLens's own copy of every matrix
  at every call (the cost the other two avoid).

Rows: ``forward`` (bare forwards with logits over the batches, ``--batch-size``), ``detection``
(:func:`~drope_lens.analysis.massive.detect_massive` on the same tokens) and ``decode`` (greedy decoding with
the KV cache, :func:`~drope_lens.tasks.scoring.greedy_generate_batch`: a ``--prompt-len`` prompt then
``--new-tokens`` one-token steps, batch ``--decode-batch``). Before timing, every variant's logits, detection
counts and decoded ids are compared with ``strided``'s: ``plain+copy`` must be bit-identical (the same
kernel on the same values), ``plain`` equal to float rounding (logits ≤ 1e-4 relative, the same counts and ids).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Iterator

import torch

VARIANTS = ("strided", "plain", "plain+copy")
ROWS = ("forward", "detection", "decode")
#: The variants whose kernels transform each matrix per call, as the code before issue 25 did.
PER_CALL = ("strided", "plain+copy")


def per_call_linear_view(module: Any, name: str) -> torch.Tensor:
    """The old kernels' ``W.T.contiguous()`` / ``rearrange(W_O, "h d m -> m (h d)").contiguous()``."""
    w = module._parameters[name]
    if w.ndim == 3:  # W_O [head, d_head, d_model]
        h, d, m = w.shape
        return w.permute(2, 0, 1).reshape(m, h * d).contiguous()
    return w.T.contiguous()


def per_call_heads_linear(x: torch.Tensor, w: torch.Tensor, bias: Any = None) -> torch.Tensor:
    """The old kernels' ``F.linear(x, rearrange(W, "h m d -> (h d) m").contiguous(), b)``."""
    import torch.nn.functional as F

    h, m, d = w.shape
    w2 = w.permute(0, 2, 1).reshape(h * d, m).contiguous()
    out = F.linear(x.to(w.device), w2, None if bias is None else bias.reshape(-1))
    return out.reshape(x.shape[0], x.shape[1], h, d)


@contextlib.contextmanager
def per_call_kernels(on: bool) -> Iterator[None]:
    """The old per-call transform in drope_lens's kernels inside the block (``on=False``: a no-op)."""
    from drope_lens.loading.hooked import fast_attention, zero_bias

    if not on:
        yield
        return
    saved = (zero_bias.linear_view, zero_bias.heads_linear, fast_attention.linear_view)
    zero_bias.linear_view, zero_bias.heads_linear = per_call_linear_view, per_call_heads_linear
    fast_attention.linear_view = per_call_linear_view
    try:
        yield
    finally:
        zero_bias.linear_view, zero_bias.heads_linear, fast_attention.linear_view = saved


def strided_layout(model: Any) -> Any:
    """The pre-issue-25 layout: each matrix parameter a strided view of a contiguous nn.Linear-layout tensor."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("W_Q", "W_K", "W_V", "_W_K", "_W_V") and param.ndim == 3:
                h, m, d = param.shape
                base = param.permute(0, 2, 1).reshape(h * d, m).contiguous()
                param.data = base.view(h, d, m).permute(0, 2, 1)
            elif leaf == "W_O" and param.ndim == 3:
                h, d, m = param.shape
                base = param.permute(2, 0, 1).reshape(m, h * d).contiguous()
                param.data = base.view(m, h, d).permute(1, 2, 0)
            elif leaf in ("W_in", "W_gate", "W_out", "W_U") and param.ndim == 2:
                param.data = param.T.contiguous().T
    return model


def build_variants(model: Any) -> dict[str, Any]:
    strided = strided_layout(copy.deepcopy(model))
    assert not all(p.is_contiguous() for p in strided.parameters())
    return {"strided": strided, "plain": model, "plain+copy": copy.deepcopy(model)}


def _rows(model: Any, batch: Any, args: argparse.Namespace) -> dict[str, Callable[[], Any]]:
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.tasks.scoring import greedy_generate_batch

    device = model.cfg.device

    @torch.no_grad()
    def forward():
        outs = []
        for _, sub in batch.batches(args.batch_size):
            outs.append(model(sub.tokens.to(device)))
        return torch.cat(outs)

    def detection():
        res = detect_massive(model, batch, batch_size=args.batch_size)
        return {k: res.total_mean(k) for k in ("q", "k", "v")}

    prompt = batch.tokens[: args.decode_batch, : args.prompt_len]

    def decode():
        return greedy_generate_batch(model, prompt, args.new_tokens, stop_at_eos=False)

    return {"forward": forward, "detection": detection, "decode": decode}


@contextlib.contextmanager
def _hooked_backend() -> Iterator[None]:
    from drope_lens.loading.backend import ENV_VAR

    saved = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = "hooked"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = saved


def _difference(a: Any, b: Any) -> float:
    """0 for bit-identical results; the max relative difference of logits; 1 for counts or ids that differ."""
    if isinstance(a, torch.Tensor):
        return float(((a - b).abs() / a.abs().max().clamp_min(1e-12)).max())
    if isinstance(a, dict):  # detection: mean counts per tensor
        return max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for k in a)
    return 0.0 if a == b else 1.0


def run(args: argparse.Namespace) -> dict:
    from benchmarks.cases import load_models, make_workload

    if args.threads:
        torch.set_num_threads(args.threads)
    with _hooked_backend():  # the layouts are HookedTransformer's, whatever $DROPE_LENS_BACKEND says
        models = load_models(args.model)
    wl = make_workload(models, args.n_texts, args.seq_len, args.batch_size)
    variants = build_variants(models.tl["rope"])
    rows = {name: _rows(m, wl.batch, args) for name, m in variants.items()}

    def call(variant: str, row: str) -> Any:
        with per_call_kernels(variant in PER_CALL):
            return rows[variant][row]()

    differences = {}
    for row in ROWS:
        ref = call("strided", row)
        differences[row] = {v: _difference(ref, call(v, row)) for v in VARIANTS[1:]}
    times: dict[str, dict[str, list[float]]] = {row: {v: [] for v in VARIANTS} for row in ROWS}
    for rnd in range(args.repeat):
        for row in ROWS:
            order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
            for v in order:
                t0 = time.perf_counter()
                call(v, row)
                times[row][v].append(time.perf_counter() - t0)

    return {
        "model": args.model,
        "workload": f"{wl.n_texts} x {wl.seq_len} tok, batch {args.batch_size}; decode: batch {args.decode_batch}, "
        f"{args.prompt_len}-token prompt + {args.new_tokens} steps",
        "repeat": args.repeat,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "difference_from_strided": differences,
        "best_s": {row: {v: min(ts) for v, ts in per.items()} for row, per in times.items()},
        "all_s": times,
    }


def table(res: dict) -> str:
    lines = [
        f"{res['model']}: {res['workload']}; best of {res['repeat']}, {res['threads']} threads; {res['machine']}",
        "",
        "| row | " + " | ".join(VARIANTS) + " | plain / strided | plain vs strided | plain+copy vs strided |",
        "|---|" + "---|" * (len(VARIANTS) + 3),
    ]
    for row in ROWS:
        best = res["best_s"][row]
        ratio = best["plain"] / best["strided"]
        cells = " | ".join(f"{best[v]:.3f} s" for v in VARIANTS)
        diff = res["difference_from_strided"][row]
        lines.append(f"| {row} | {cells} | {ratio:.2f} | {diff['plain']:.1e} | {diff['plain+copy']:.1e} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="embedded", choices=("embedded", "tiny"))
    p.add_argument("--n-texts", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--decode-batch", type=int, default=1)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the figures here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    res = run(args)
    print(table(res))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    ok = all(d["plain+copy"] == 0 and d["plain"] <= 1e-4 for d in res["difference_from_strided"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
