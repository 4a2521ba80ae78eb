#!/usr/bin/env python
"""Weight layouts side by side, in one process: bare forward, detection and KV-cache decoding (issue 25).

    python -m benchmarks.layout_ab                          # embedded SmolLM2-135M, 4 x 256 tokens, best of 5
    python -m benchmarks.layout_ab --repeat 7 --threads 2 --json layout_ab.json
    python -m benchmarks.layout_ab --model tiny --repeat 1  # seconds; what the test runs

Three variants of the same loaded model, timed interleaved (each round runs every variant once, in a
rotating order, so drift in machine load hits all of them alike; the best of ``--repeat`` rounds is kept):

* ``strided``: the layout before issue 25. Matrix parameters are strided views of ``nn.Linear``-layout
  tensors (so ``safetensors``, ``.view(-1)``, ``parameters_to_vector`` fail on them) and the kernels'
  weight cache is off: turning the view back into the ``nn.Linear`` layout is then itself a view, as the
  old code's ``W.T.contiguous()`` was. The same memory layout and the same per-call work as the old code.
* ``plain+cache``: what drope_lens loads now. Plain contiguous parameters in TransformerLens's layout;
  the kernels read a cached ``nn.Linear``-layout copy (:mod:`drope_lens.loading.hooked.weights`).
* ``plain+copy``: plain parameters, cache off: TransformerLens's own per-call copy of every matrix (the
  cost the other two avoid; no extra memory).

Rows: ``forward`` (bare forwards with logits over the batches, ``--batch-size``), ``detection``
(:func:`~drope_lens.analysis.massive.detect_massive` on the same tokens) and ``decode`` (greedy decoding with
the KV cache, :func:`~drope_lens.tasks.scoring.greedy_generate_batch`: a ``--prompt-len`` prompt then
``--new-tokens`` one-token steps, batch ``--decode-batch``). Before timing, every variant's logits, detection
counts and decoded ids are compared with the first one's: they must be identical (bit for bit).
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

VARIANTS = ("strided", "plain+cache", "plain+copy")
ROWS = ("forward", "detection", "decode")


def strided_layout(model: Any) -> Any:
    """The pre-issue-25 layout: each matrix parameter a strided view of a contiguous nn.Linear-layout tensor."""
    from drope_lens.loading.hooked.weights import RULES

    for name, param in model.named_parameters():
        rule = RULES.get(name.rsplit(".", 1)[-1])
        if rule is None or param.ndim != rule.ndim:
            continue
        with torch.no_grad():
            base = rule.to_linear(param.detach()).contiguous()
            param.data = rule.back(base, param)  # same shape and values, nn.Linear memory underneath
    return model


def build_variants(model: Any) -> dict[str, Any]:
    from drope_lens.loading.hooked.weights import kernel_weight_cache

    strided = strided_layout(kernel_weight_cache(copy.deepcopy(model), False))
    assert not all(p.is_contiguous() for p in strided.parameters())
    copying = kernel_weight_cache(copy.deepcopy(model), False)
    return {"strided": strided, "plain+cache": model, "plain+copy": copying}


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


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def run(args: argparse.Namespace) -> dict:
    from benchmarks.cases import load_models, make_workload

    if args.threads:
        torch.set_num_threads(args.threads)
    with _hooked_backend():  # the layouts are HookedTransformer's, whatever $DROPE_LENS_BACKEND says
        models = load_models(args.model)
    wl = make_workload(models, args.n_texts, args.seq_len, args.batch_size)
    variants = build_variants(models.tl["rope"])
    rows = {name: _rows(m, wl.batch, args) for name, m in variants.items()}
    identical = {}
    for row in ROWS:
        ref = rows[VARIANTS[0]][row]()
        identical[row] = all(_same(ref, rows[v][row]()) for v in VARIANTS[1:])
    times: dict[str, dict[str, list[float]]] = {row: {v: [] for v in VARIANTS} for row in ROWS}
    for rnd in range(args.repeat):
        for row in ROWS:
            order = VARIANTS[rnd % len(VARIANTS) :] + VARIANTS[: rnd % len(VARIANTS)]
            for v in order:
                t0 = time.perf_counter()
                rows[v][row]()
                times[row][v].append(time.perf_counter() - t0)
    from drope_lens.loading.hooked.weights import kernel_weight_bytes

    return {
        "model": args.model,
        "workload": f"{wl.n_texts} x {wl.seq_len} tok, batch {args.batch_size}; decode: batch {args.decode_batch}, "
        f"{args.prompt_len}-token prompt + {args.new_tokens} steps",
        "repeat": args.repeat,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "identical_outputs": identical,
        "cache_mb": kernel_weight_bytes(variants["plain+cache"]) / 2**20,
        "best_s": {row: {v: min(ts) for v, ts in per.items()} for row, per in times.items()},
        "all_s": times,
    }


def table(res: dict) -> str:
    lines = [
        f"{res['model']}: {res['workload']}; best of {res['repeat']}, {res['threads']} threads; {res['machine']}",
        f"kernel weight cache of plain+cache: {res['cache_mb']:.0f} MB",
        "",
        "| row | " + " | ".join(VARIANTS) + " | plain+cache / strided | identical outputs |",
        "|---|" + "---|" * (len(VARIANTS) + 2),
    ]
    for row in ROWS:
        best = res["best_s"][row]
        ratio = best["plain+cache"] / best["strided"]
        cells = " | ".join(f"{best[v]:.3f} s" for v in VARIANTS)
        lines.append(f"| {row} | {cells} | {ratio:.2f} | {res['identical_outputs'][row]} |")
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
    return 0 if all(res["identical_outputs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
