#!/usr/bin/env python
"""Time the residual / Exp 5-9 analyses on the embedded pair against bare forward passes.

    python benchmarks/extended.py [--max-length 256] [--repeat 2]

Run on a quiet machine; prints one JSON object (seconds, best of ``--repeat``) per model. The
report's ``extended`` step is the sum of these plus the perplexity passes (≈ 12 bare forwards).
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    import torch

    import drope_lens as dl
    from drope_lens.analysis import bos_write, head_classes, key_importance, layer_norms, residual_massive_activations
    from drope_lens.data.texts import builtin_split
    from drope_lens.loading.forward import forward_batch, to_batch

    pair = dl.load_pair()
    texts = builtin_split()["identify"]
    out = {}
    for role, model in pair.items():
        batch = to_batch(model, texts, max_length=args.max_length)
        kw = dict(max_length=args.max_length)
        with torch.no_grad():
            out[role] = {
                "bare_forward": best(
                    lambda model=model, batch=batch: forward_batch(model, batch, return_type=None), args.repeat
                ),
                "residual": best(
                    lambda model=model, kw=kw: residual_massive_activations(model, texts, **kw), args.repeat
                ),
                "bos_write": best(lambda model=model, kw=kw: bos_write(model, texts, **kw), args.repeat),
                "head_classes": best(lambda model=model, kw=kw: head_classes(model, texts, **kw), args.repeat),
                "layer_norms": best(lambda model=model, kw=kw: layer_norms(model, texts, **kw), args.repeat),
                "key_importance": best(lambda model=model, kw=kw: key_importance(model, texts, **kw), args.repeat),
            }
    print(json.dumps({"texts": len(texts), "max_length": args.max_length, "seconds": out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
