"""Loading memory benchmark: peak host RSS (and CUDA peak memory) of load_hooked / load_pair.

Saves a Llama-shaped random checkpoint (bf16 safetensors, ~0.55B parameters by default) to a temp
folder, then loads it in a fresh child process per configuration and reports, from
``/proc/self/status``: RSS after the imports, peak RSS (VmHWM) after loading, load seconds, the final
model's bytes (parameters + buffers) and ``(peak - imports) / model bytes``. Old (HF model path,
``lean=False``) vs new (lean) loader; pairs with and without ``offload='cpu'``; the bridge backend
(the HF model wrapped, one copy of the weights), in bf16 and in
``quantize='nf4'`` (bitsandbytes; needs bitsandbytes and accelerate).

    python benchmarks/memory.py                 # 0.55B shape, CPU, writes benchmarks/results-memory.json
    python benchmarks/memory.py --tiny          # seconds; what the tests run
    python benchmarks/memory.py --device cuda   # also CUDA peak memory
    python benchmarks/memory.py --configs "bridge bf16,bridge nf4" --out /tmp/nf4-memory.json

Load times on a loaded machine are inflated; memory figures are not much affected.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHAPES = {  # Llama-shaped; "default" is ~0.55B parameters
    "default": dict(
        hidden_size=1536,
        intermediate_size=4096,
        num_hidden_layers=16,
        num_attention_heads=12,
        num_key_value_heads=12,
        vocab_size=32000,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=152,
    ),
}
CONFIGS = [  # (name, kind, kwargs)
    ("load_hooked old", "hooked", {"lean": False}),
    ("load_hooked lean", "hooked", {}),
    ("load_pair old", "pair", {"lean": False}),
    ("load_pair lean", "pair", {}),
    ("load_pair lean offload=cpu", "pair", {"offload": "cpu"}),
    ("load_hooked bridge bf16", "hooked", {"backend": "bridge"}),
    ("load_pair bridge bf16", "pair", {"backend": "bridge"}),
    ("load_hooked bridge nf4", "hooked", {"backend": "bridge", "quantize": "nf4"}),
]


def _status(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return -1


def write_checkpoint(folder: Path, shape: dict, seed: int = 0) -> int:
    """A random bf16 Llama checkpoint (config.json, model.safetensors, tokenizer); returns n_params."""
    import torch
    from safetensors.torch import save_file

    from drope_lens.testing import tiny_tokenizer

    h, m, n = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    d = h // shape["num_attention_heads"]
    kv = shape["num_key_value_heads"] * d
    g = torch.Generator().manual_seed(seed)

    def rnd(*s):
        return (torch.randn(*s, generator=g) * 0.02).to(torch.bfloat16)

    sd = {
        "model.embed_tokens.weight": rnd(shape["vocab_size"], h),
        "lm_head.weight": rnd(shape["vocab_size"], h),
        "model.norm.weight": torch.ones(h, dtype=torch.bfloat16),
    }
    for i in range(n):
        p = f"model.layers.{i}."
        sd.update(
            {
                p + "self_attn.q_proj.weight": rnd(h, h),
                p + "self_attn.k_proj.weight": rnd(kv, h),
                p + "self_attn.v_proj.weight": rnd(kv, h),
                p + "self_attn.o_proj.weight": rnd(h, h),
                p + "mlp.up_proj.weight": rnd(m, h),
                p + "mlp.gate_proj.weight": rnd(m, h),
                p + "mlp.down_proj.weight": rnd(h, m),
                p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
                p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    save_file(sd, str(folder / "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(
        shape,
        model_type="llama",
        architectures=["LlamaForCausalLM"],
        torch_dtype="bfloat16",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        hidden_act="silu",
        bos_token_id=1,
        eos_token_id=2,
    )
    (folder / "config.json").write_text(json.dumps(cfg))
    tiny_tokenizer().save_pretrained(str(folder))
    return sum(t.numel() for t in sd.values())


def child(folder: str, kind: str, kwargs: dict, device: str) -> dict:
    """Runs in a fresh process: import, measure, load, measure."""
    import torch
    import transformer_lens.model_bridge  # noqa: F401  (imports count as imports, not as loading)

    import drope_lens  # noqa: F401
    from drope_lens.loading import load_hooked, load_pair
    from drope_lens.loading.backend import check_backend

    if check_backend(kwargs.get("backend")) == "hooked":
        import drope_lens.loading.hooked.load  # noqa: F401

    imports = _status("VmRSS")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if kind == "hooked":
        models = [load_hooked(folder, dtype="bfloat16", device=device, **kwargs)]
    else:
        pair = load_pair(folder, dtype="bfloat16", device=device, **kwargs)
        if pair.offload is not None:
            pair.activate("rope")
        models = [pair.rope, pair.drope]
    seconds = time.perf_counter() - t0
    with torch.no_grad():  # read every weight, so memory that was only mapped is counted too
        for mdl in models:
            for t in mdl.parameters():
                t.sum()
    model_bytes = sum(
        t.numel() * t.element_size() for mdl in models for t in list(mdl.parameters()) + list(mdl.buffers())
    )
    import gc

    gc.collect()
    out = dict(imports_rss=imports, peak_rss=_status("VmHWM"), load_s=round(seconds, 2), model_bytes=model_bytes)
    out["rss_after"] = _status("VmRSS")  # resident once loaded (what stays), next to the load's peak
    # of which: pages of the memory-mapped checkpoint (file-backed, reclaimable) and the process's own memory
    out["rss_file_after"], out["rss_anon_after"] = _status("RssFile"), _status("RssAnon")
    out["ratio"] = round((out["peak_rss"] - imports) / model_bytes, 3)
    if device.startswith("cuda"):
        out["cuda_peak"] = torch.cuda.max_memory_allocated()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny shape (for tests)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results-memory.json"))
    p.add_argument(
        "--configs",
        default=None,
        help="comma-separated substrings of the configurations to run (default: all), e.g. 'bridge bf16,bridge nf4'",
    )
    p.add_argument("--child", nargs=3, metavar=("FOLDER", "KIND", "KWARGS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child[0], args.child[1], json.loads(args.child[2]), args.device)))
        return 0
    shape = SHAPES["tiny" if args.tiny else "default"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="drope-mem-") as tmp:
        print(f"writing a random bf16 checkpoint {shape} ...", flush=True)
        n_params = write_checkpoint(Path(tmp) / "ckpt", shape)
        print(f"  {n_params / 1e6:.0f}M parameters", flush=True)
        wanted = [w.strip() for w in args.configs.split(",")] if args.configs else None
        for name, kind, kwargs in CONFIGS:
            if wanted is not None and not any(w in name for w in wanted):
                continue
            if kwargs.get("quantize") and importlib.util.find_spec("bitsandbytes") is None:
                print(f"{name:30s} skipped: bitsandbytes is not installed", flush=True)
                continue
            if "offload" in kwargs and not args.device.startswith("cuda"):
                kwargs = dict(kwargs)  # on CPU, device and offload are the same memory
            cmd = [
                sys.executable,
                __file__,
                "--device",
                args.device,
                "--child",
                str(Path(tmp) / "ckpt"),
                kind,
                json.dumps(kwargs),
            ]
            res = subprocess.run(
                cmd,
                capture_output=True,
                text=True,
                cwd=str(ROOT),
                env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")),
            )
            if res.returncode != 0:
                raise RuntimeError(f"{name} failed:\n{res.stderr[-3000:]}")
            row = dict(
                config=name, device=args.device, n_params=n_params, **json.loads(res.stdout.strip().splitlines()[-1])
            )
            rows.append(row)
            gb = lambda b: f"{b / 1e9:.2f} GB"  # noqa: E731
            print(
                f"{name:30s} model {gb(row['model_bytes'])}  imports {gb(row['imports_rss'])}  "
                f"peak RSS {gb(row['peak_rss'])}  after {gb(row['rss_after'])} "
                f"(file {gb(row['rss_file_after'])}, anon {gb(row['rss_anon_after'])})  "
                f"(peak-imports)/model {row['ratio']:.2f}  "
                f"load {row['load_s']} s" + (f"  cuda peak {gb(row['cuda_peak'])}" if "cuda_peak" in row else ""),
                flush=True,
            )
    Path(args.out).write_text(json.dumps({"shape": shape, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
