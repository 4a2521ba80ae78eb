"""Speed and memory of the two backends side by side in one process: TransformerBridge vs HookedTransformer vs a
bare HF sdpa forward, on the embedded RoPE model.

``python -m benchmarks.backends [--lengths 256,4096] [--repeat 3] [--json PATH]``: for each length (one text of
built-in prose, filler past it), the sections run interleaved — HF sdpa forward, then for each backend a forward
with logits, ``detect_massive`` and ``phase_profile`` — one untimed warm-up round, then ``--repeat`` rounds,
the best time and the largest peak
memory above what the process held (:class:`benchmarks.run.PeakMeter`) kept per section. Take the figures on a
quiet machine: every section is a ratio against the HF forward measured in the same rounds.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any, Callable, Optional, Sequence

import torch

from benchmarks.run import PeakMeter, machine_info


def _tokens(tokenizer: Any, length: int) -> torch.Tensor:
    from drope_lens.analysis.context import long_text_tokens

    return long_text_tokens(tokenizer, length)


def sections(models: dict[str, Any], hf: Any, tokens: torch.Tensor) -> dict[str, Callable[[], Any]]:
    from drope_lens.analysis import detect_massive, phase_profile
    from drope_lens.loading import TokenBatch

    batch = TokenBatch(tokens, torch.tensor([tokens.shape[1]]))
    out: dict[str, Callable[[], Any]] = {"hf_sdpa forward": lambda: hf(tokens).logits}
    for name, model in models.items():
        out[f"{name} forward"] = lambda m=model: m(tokens)
        out[f"{name} detection"] = lambda m=model: detect_massive(m, batch, batch_size=1)
        out[f"{name} phase"] = lambda m=model: phase_profile(m, batch, batch_size=1)
    return out


@torch.no_grad()
def run(lengths: Sequence[int], repeat: int, backends: Sequence[str]) -> list[dict]:
    from transformers import AutoModelForCausalLM

    from drope_lens.loading import embedded_checkpoint, load_embedded

    meter = PeakMeter("cpu")
    models = {b: load_embedded(backend=b) for b in backends}
    hf = AutoModelForCausalLM.from_pretrained(str(embedded_checkpoint()), dtype=torch.float32)
    hf.config._attn_implementation = "sdpa"
    hf.eval()
    tokenizer = next(iter(models.values())).tokenizer
    rows: list[dict] = []
    for length in lengths:
        tokens = _tokens(tokenizer, length)
        todo = sections(models, hf, tokens)
        best: dict[str, dict] = {}
        for fn in todo.values():  # warm-up round, not timed (first-call allocations, kernel selection)
            fn()
        for _ in range(repeat):
            for name, fn in todo.items():
                meter.start()
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
                peak = meter.stop()
                rec = best.setdefault(name, {"time_s": dt, "peak_delta_mb": peak, "times": []})
                rec["times"].append(dt)
                rec["time_s"] = min(rec["time_s"], dt)
                rec["peak_delta_mb"] = max(rec["peak_delta_mb"], peak)
        ref = best["hf_sdpa forward"]["time_s"]
        for name, rec in best.items():
            rows.append({"tokens": length, "section": name, **rec, "vs_hf_forward": rec["time_s"] / ref})
    return rows


def markdown(rows: Sequence[dict]) -> str:
    lines = [
        "| tokens | section | time (s) | × HF sdpa forward | peak memory above held (MB) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        ratio, peak = r["vs_hf_forward"], r["peak_delta_mb"]
        lines.append(f"| {r['tokens']} | {r['section']} | {r['time_s']:.2f} | {ratio:.2f} | {peak:.0f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from drope_lens.loading.backend import hooked_available

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="256,4096", help="comma-separated token counts (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="rounds; best time kept (default %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="also write the rows and the machine to this JSON file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    backends = ["bridge", "hooked"] if hooked_available() else ["bridge"]
    rows = run([int(x) for x in args.lengths.split(",")], args.repeat, backends)
    print(markdown(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_info("cpu"), "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
