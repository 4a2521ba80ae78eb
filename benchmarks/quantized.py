"""A pair in NF4 next to the same pair unquantized: what 4-bit weights change, and what they cost.

Both sides run on the bridge backend (the only one that holds quantized weights), so every difference
in the table is the quantization's: same backend, same attention code (float32 scores), same tokens.

    python benchmarks/quantized.py                          # embedded SmolLM2-135M pair, CPU: fp32 vs NF4
    python benchmarks/quantized.py --model llama2-7b-shaped --device cuda    # GPU: bf16 vs NF4 (random 7B)
    python benchmarks/quantized.py --model llama2-shaped-tiny               # CPU rehearsal of the GPU run

Embedded (``--model embedded``): per model of the pair, perplexity on held-out prose, the massive Q/K/V
counts (λ = 5), the mean sink rate (τ = 0.3) and the BOS-MLP ablation factor (perplexity ratio, the
study's Exp 4), in float32 and in NF4 (double quantization, float32 compute), with the difference.

Llama-2-7B-shaped (``--model llama2-7b-shaped``): a random bf16 checkpoint is written once (to
``/dev/shm`` when it exists), then loaded as a pair twice, in bf16 and in NF4 (bf16 compute, the study's
setup up to its float16), each timed with the peak device memory of the load and of each analysis:
detection, phase (with BOS-MLP ablation) and disruption. Random weights: the numbers say what runs and
what it costs, not what a trained model shows.

Timings on a shared machine are not comparable; run it alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODELS = ("embedded", "llama2-7b-shaped", "llama2-shaped-tiny")


# ------------------------------------------------------------------------------------------- measures
def _peak_reset(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def _peak(device: str) -> Optional[int]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated())
    return None


def timed(device: str, fn: Callable[[], Any]) -> tuple[Any, float, Optional[int]]:
    _peak_reset(device)
    t0 = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0, _peak(device)


def measure_model(model: Any, texts: Any, ppl_texts: Any, *, max_length: int, device: str, seeds: int) -> dict:
    """One model: perplexity (``ppl_texts``), massive Q/K/V counts, phase (sink rate, BOS-MLP ablation factor)
    and disruption (massive vs random Q/K channels zeroed) on ``texts``."""
    from drope_lens.analysis.disruption import run_disruption
    from drope_lens.analysis.interventions import phase_experiment
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.analysis.perplexity import perplexity

    out: dict[str, Any] = {}
    ppl, s, peak = timed(device, lambda: perplexity(model, ppl_texts, max_length=max_length))
    out["ppl"], out["ppl_s"], out["ppl_peak"] = ppl.ppl, round(s, 2), peak
    massive, s, peak = timed(device, lambda: detect_massive(model, texts, max_length=max_length))
    out["massive"] = {t: massive.total_mean(t) for t in ("q", "k", "v")}
    out["detection_s"], out["detection_peak"] = round(s, 2), peak
    phase, s, peak = timed(
        device, lambda: phase_experiment(model, texts, conditions=("baseline", "bos_mlp"), max_length=max_length)
    )
    base = phase.conditions["baseline"].ppl["ppl"]
    out["bos_mlp_factor"] = phase.conditions["bos_mlp"].ppl["ppl"] / base
    out["bos_layer"] = phase.bos_layer
    out["mean_sink_rate"] = float(phase.baseline.summary()["mean_sink_rate"])
    out["phase_s"], out["phase_peak"] = round(s, 2), peak
    dis, s, peak = timed(
        device,
        lambda: run_disruption(model, identify_texts=texts, eval_texts=ppl_texts, n_seeds=seeds, max_length=max_length),
    )
    out["disruption_massive_pct"], out["disruption_m_minus_r"] = dis.massive_pct, dis.m_minus_r
    out["disruption_s"], out["disruption_peak"] = round(s, 2), peak
    return out


# ------------------------------------------------------------------------------------------- models
def load_embedded_pair(quantize: Optional[str], device: str) -> Any:
    import drope_lens as dl

    return dl.load_pair(backend="bridge", quantize=quantize, device=device)


def write_random_checkpoint(folder: Path, shape: dict, device: str) -> int:
    """A random bf16 Llama checkpoint (weights drawn on ``device``, the fast part on a GPU); returns n_params."""
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    from drope_lens.testing import tiny_tokenizer

    h, m, n_layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    d = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * d
    g = torch.Generator(device=device).manual_seed(0)

    def rnd(*size: int) -> torch.Tensor:
        return (torch.randn(*size, generator=g, device=device) * 0.02).to(torch.bfloat16).cpu()

    ones = lambda k: torch.ones(k, dtype=torch.bfloat16)  # noqa: E731
    sd = {"model.embed_tokens.weight": rnd(shape["vocab_size"], h), "lm_head.weight": rnd(shape["vocab_size"], h)}
    sd["model.norm.weight"] = ones(h)
    for i in range(n_layers):
        p = f"model.layers.{i}."
        q = rnd(h, h)
        k = rnd(kv, h)
        if i < 2:  # a few large Q/K channels, so detection and disruption have something to find
            (q if i == 0 else k)[5 if i == 0 else 7] *= 40.0
        sd.update(
            {
                p + "self_attn.q_proj.weight": q,
                p + "self_attn.k_proj.weight": k,
                p + "self_attn.v_proj.weight": rnd(kv, h),
                p + "self_attn.o_proj.weight": rnd(h, h),
                p + "mlp.up_proj.weight": rnd(m, h),
                p + "mlp.gate_proj.weight": rnd(m, h),
                p + "mlp.down_proj.weight": rnd(h, m),
                p + "input_layernorm.weight": ones(h),
                p + "post_attention_layernorm.weight": ones(h),
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    cfg.architectures = ["LlamaForCausalLM"]
    cfg.save_pretrained(str(folder))
    tiny_tokenizer().save_pretrained(str(folder))
    return sum(t.numel() for t in sd.values())


def random_batch(n_texts: int, seq_len: int, vocab: int) -> Any:
    from drope_lens.loading.tokens import TokenBatch

    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, vocab, (n_texts, seq_len), generator=g)
    tokens[:, 0] = 1
    return TokenBatch(tokens, torch.full((n_texts,), seq_len))


# ------------------------------------------------------------------------------------------- runs
def run_embedded(args: argparse.Namespace) -> dict:
    from drope_lens.data.texts import builtin_split

    split = builtin_split()
    texts, ppl_texts = split["identify"][: args.n_texts], split["eval"][: args.n_ppl_texts]
    rows: dict[str, Any] = {}
    for label, quantize in (("fp32", None), ("nf4", "nf4")):
        print(f"== {label}: loading the embedded pair (bridge) ...", flush=True)
        pair, s, _ = timed(args.device, lambda q=quantize: load_embedded_pair(q, args.device))
        rows[label] = {"load_s": round(s, 2), "labels": dict(pair.labels)}
        for role, model in pair.items():
            print(f"   {role}: massive, phase, disruption ...", flush=True)
            rows[label][role] = measure_model(
                model, texts, ppl_texts, max_length=args.max_length, device=args.device, seeds=args.seeds
            )
        del pair
    return {"rows": rows, "texts": len(texts), "ppl_texts": len(ppl_texts), "max_length": args.max_length}


def run_llama2_shaped(args: argparse.Namespace) -> dict:
    from benchmarks.cases import LLAMA2_7B_SHAPE, LLAMA2_TINY_SHAPE
    from drope_lens.loading import load_pair

    tiny = args.model == "llama2-shaped-tiny"
    if not tiny and not (args.device.startswith("cuda") and torch.cuda.is_available()):
        raise SystemExit("--model llama2-7b-shaped needs --device cuda on a CUDA machine (use llama2-shaped-tiny)")
    shape = dict(LLAMA2_TINY_SHAPE if tiny else LLAMA2_7B_SHAPE)
    base = Path("/dev/shm") if Path("/dev/shm").is_dir() and not tiny else None
    rows: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="drope-nf4-", dir=base) as tmp:
        folder = Path(tmp) / "ckpt"
        n_params, s, _ = timed(args.device, lambda: write_random_checkpoint(folder, shape, args.device))
        print(f"== random bf16 checkpoint, {n_params / 1e9:.2f}B parameters, written in {s:.1f} s", flush=True)
        batch = random_batch(args.n_texts, args.seq_len, shape["vocab_size"])
        for label, quantize in (("bf16", None), ("nf4", "nf4")):
            print(f"== {label}: loading the pair (bridge) ...", flush=True)
            pair, s, peak = timed(
                args.device,
                lambda q=quantize: load_pair(
                    str(folder), backend="bridge", dtype="bfloat16", device=args.device, quantize=q
                ),
            )
            rows[label] = {"load_s": round(s, 2), "load_peak": peak, "n_params": n_params}
            for role, model in pair.items():
                print(f"   {role}: detection, phase, disruption ...", flush=True)
                rows[label][role] = measure_model(
                    model, batch, batch, max_length=args.seq_len, device=args.device, seeds=args.seeds
                )
            del pair
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return {"rows": rows, "shape": shape, "n_texts": args.n_texts, "seq_len": args.seq_len}


# ------------------------------------------------------------------------------------------- table
def _gb(value: Optional[int]) -> str:
    return "" if value is None else f"{value / 2**30:.2f} GiB"


def table(result: dict, a: str, b: str) -> str:
    rows = result["rows"]
    lines = [f"| model | metric | {a} | {b} | {b} − {a} |", "|---|---|---|---|---|"]

    def line(role: str, name: str, x: Any, y: Any, diff: str = "") -> None:
        lines.append(f"| {role} | {name} | {x} | {y} | {diff} |")

    for role in ("rope", "drope"):
        ra, rb = rows[a][role], rows[b][role]
        for t in ("q", "k", "v"):
            x, y = ra["massive"][t], rb["massive"][t]
            line(role, f"massive {t.upper()} channels (mean over texts)", f"{x:.1f}", f"{y:.1f}", f"{y - x:+.1f}")
        for key, name in (("ppl", "perplexity (held-out)"), ("bos_mlp_factor", "BOS-MLP ablation factor (PPL ratio)")):
            rel = (rb[key] - ra[key]) / ra[key] if ra[key] else float("nan")
            line(role, name, f"{ra[key]:.4g}", f"{rb[key]:.4g}", f"{rel:+.1%}")
        da, db = ra["disruption_massive_pct"], rb["disruption_massive_pct"]
        line(role, "PPL increase with massive Q/K zeroed (%)", f"{da:.1f}", f"{db:.1f}", f"{db - da:+.1f} pp")
        sa, sb = ra["mean_sink_rate"], rb["mean_sink_rate"]
        line(role, "mean sink rate (τ = 0.3)", f"{sa:.3f}", f"{sb:.3f}", f"{sb - sa:+.3f}")
        line(role, "BOS spike layer", ra["bos_layer"], rb["bos_layer"])
        for key in ("ppl", "detection", "phase", "disruption"):
            cost_a = f"{ra[key + '_s']} s {_gb(ra[key + '_peak'])}"
            cost_b = f"{rb[key + '_s']} s {_gb(rb[key + '_peak'])}"
            line(role, f"{key}: time / peak device memory", cost_a, cost_b)
    load_a = f"{rows[a]['load_s']} s {_gb(rows[a].get('load_peak'))}"
    load_b = f"{rows[b]['load_s']} s {_gb(rows[b].get('load_peak'))}"
    lines.append(f"| pair | load: time / peak device memory | {load_a} | {load_b} | |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=MODELS, default="embedded")
    p.add_argument("--device", default="cpu")
    p.add_argument("--n-texts", type=int, default=None, help="analysis texts (default: 5 embedded, 2 llama2-shaped)")
    p.add_argument("--n-ppl-texts", type=int, default=10, help="held-out perplexity texts, embedded (default 10)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per text, embedded (default 128)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per text, llama2-shaped (default 512; tiny 64)")
    p.add_argument("--seeds", type=int, default=3, help="random-control seeds of disruption (default 3)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", default=None, help="write the result as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.model == "embedded":
        args.n_texts = args.n_texts or 5
        result = run_embedded(args)
        a, b = "fp32", "nf4"
    else:
        args.n_texts = args.n_texts or 2
        args.seq_len = args.seq_len or (64 if args.model == "llama2-shaped-tiny" else 512)
        result = run_llama2_shaped(args)
        a, b = "bf16", "nf4"
    result.update(model=args.model, device=args.device, seeds=args.seeds, threads=torch.get_num_threads())
    print()
    print(table(result, a, b))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
