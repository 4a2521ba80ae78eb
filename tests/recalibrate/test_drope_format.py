"""SakanaAI/DroPE interoperability, both ways, without their code (it carries no licence).

* A checkpoint laid out by hand as SakanaAI's ``DroPELlamaForCausalLM.save_pretrained`` writes it
  (``model_type: llama_drope``, ``attention_type``, ``softmax_scale``, their ``auto_map``; q/k norm gains of
  widths heads·head_dim and kv_heads·head_dim, both present even for the one-sided variants) gives, in
  drope_lens's training model and in its HookedTransformer, the logits of an independent HF forward written
  here: plain ``LlamaForCausalLM``, a rotary that returns cos = 1 and sin = 0, ``torch.nn.RMSNorm`` over the
  whole q / k projection, ``scaling = softmax_scale``.
* A drope_lens recalibration checkpoint has that layout (and no ``auto_map``), and the independent forward
  reads it back to the logits of the module that was trained.

Tolerances (fp32): 1e-5 between HF forwards (the same kernels; measured ~1e-6), 1e-4 against the
HookedTransformer (TransformerLens's own attention; the loading tests' tolerance).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from drope_lens.loading.parity import IdentityRotary
from drope_lens.testing import tiny_llama, tiny_tokenizer
from tests.recalibrate.test_recalibrate import _recipe, rope_dir, toy_data  # noqa: F401  (fixtures)

HF_TOL, TL_TOL = 1e-5, 1e-4
SAKANA_AUTO_MAP = {
    "AutoConfig": "drope.DroPELlamaConfig",
    "AutoModelForCausalLM": "drope.DroPELlamaForCausalLM",
}
LLAMA_KEYS_DROPPED = ("model_type", "architectures", "auto_map", "attention_type", "softmax_scale")


def independent_forward(folder: Path):
    """The reference: SakanaAI's DroPE semantics rebuilt on a plain HF Llama from the folder's files."""
    from safetensors.torch import load_file
    from transformers import LlamaConfig, LlamaForCausalLM

    raw = json.loads((folder / "config.json").read_text())
    attention_type = raw.get("attention_type", "nope")
    cfg = LlamaConfig(**{k: v for k, v in raw.items() if k not in LLAMA_KEYS_DROPPED})
    model = LlamaForCausalLM.from_pretrained(str(folder), config=cfg, dtype=torch.float32).eval()
    model.model.rotary_emb = IdentityRotary(model.model.rotary_emb)  # cos = 1, sin = 0
    tensors = load_file(str(folder / "model.safetensors"))
    sides = {"nope": "", "qk_norm_nope": "qk", "q_norm_nope": "q", "k_norm_nope": "k"}[attention_type]
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        if raw.get("softmax_scale") is not None:
            attn.scaling = raw["softmax_scale"]
        for side in sides:
            proj = getattr(attn, f"{side}_proj")
            norm = nn.RMSNorm(proj.out_features, eps=cfg.rms_norm_eps)
            norm.weight.data.copy_(tensors[f"model.layers.{i}.self_attn.{side}_norm.weight"])
            setattr(attn, f"{side}_proj", nn.Sequential(proj, norm))
    return model


def sakana_checkpoint(path: Path, attention_type: str, softmax_scale=None, seed: int = 5) -> Path:
    """A checkpoint in the layout SakanaAI's code saves, written by hand."""
    from safetensors.torch import load_file, save_file

    hf = tiny_llama(seed=seed)
    hf.save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    cfg = json.loads((path / "config.json").read_text())
    cfg.update(model_type="llama_drope", architectures=["DroPELlamaForCausalLM"], attention_type=attention_type)
    cfg["auto_map"] = SAKANA_AUTO_MAP
    if softmax_scale is not None:
        cfg["softmax_scale"] = softmax_scale
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    if attention_type != "nope":  # their q/k-norm attention always creates both norms
        sd = load_file(str(path / "model.safetensors"))
        c = hf.config
        g = torch.Generator().manual_seed(seed)
        for i in range(c.num_hidden_layers):
            sd[f"model.layers.{i}.self_attn.q_norm.weight"] = (
                torch.rand(c.num_attention_heads * c.head_dim, generator=g) * 3
            )
            sd[f"model.layers.{i}.self_attn.k_norm.weight"] = (
                torch.rand(c.num_key_value_heads * c.head_dim, generator=g) * 3
            )
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    return path


def _ids(n: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.cat([torch.tensor([[1]]), torch.randint(4, len(tiny_tokenizer()), (1, n - 1), generator=g)], 1)


@pytest.mark.parametrize(
    "attention_type, scale",
    [("nope", None), ("qk_norm_nope", 0.07), ("q_norm_nope", None), ("k_norm_nope", 0.2)],
)
def test_a_sakana_checkpoint_reads_into_drope_lens_as_the_independent_forward(tmp_path, attention_type, scale):
    import drope_lens as dl
    from drope_lens.recalibrate import DroPELlamaForCausalLM

    folder = sakana_checkpoint(tmp_path / "sakana", attention_type, scale)
    ids = _ids()
    with torch.no_grad():
        ref = independent_forward(folder)(ids).logits
        rope = tiny_llama(seed=5)(ids).logits
        trained = DroPELlamaForCausalLM.from_pretrained(str(folder)).eval()
        assert trained.config.attention_type == attention_type
        assert (trained(ids).logits - ref).abs().max() <= HF_TOL
        hooked = dl.load_hooked(folder)
        assert (hooked(ids) - ref).abs().max() <= TL_TOL
    assert (rope - ref).abs().max() > 1e-2  # the reference is not the RoPE model


def test_a_drope_lens_checkpoint_has_sakanas_layout_and_reads_back_independently(rope_dir, toy_data, tmp_path):  # noqa: F811
    from safetensors.torch import load_file
    from transformers import LlamaForCausalLM

    import drope_lens as dl
    from drope_lens.recalibrate import recalibrate

    r = recalibrate(
        rope_dir,
        _recipe(variant="qk_norm_nope", max_steps=2, save_every=2),
        tmp_path / "run",
        data=toy_data,
        progress=False,
    )
    folder = Path(r.final)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "llama_drope" and cfg["architectures"] == ["DroPELlamaForCausalLM"]
    assert cfg["attention_type"] == "qk_norm_nope" and "auto_map" not in cfg and "softmax_scale" not in cfg
    rope_cfg = json.loads((rope_dir / "config.json").read_text())
    assert {
        k: v for k, v in cfg.items() if k not in LLAMA_KEYS_DROPPED + ("dtype", "use_cache", "transformers_version")
    } == {
        k: v
        for k, v in rope_cfg.items()
        if k not in LLAMA_KEYS_DROPPED + ("dtype", "use_cache", "transformers_version")
    }  # otherwise the RoPE model's Llama config
    tensors = load_file(str(folder / "model.safetensors"))
    plain = set(LlamaForCausalLM(tiny_llama().config).state_dict())
    c = tiny_llama().config
    norms = {f"model.layers.{i}.self_attn.{s}_norm.weight" for i in range(c.num_hidden_layers) for s in "qk"}
    assert set(tensors) == plain | norms
    assert tensors["model.layers.0.self_attn.q_norm.weight"].shape == (c.num_attention_heads * c.head_dim,)
    assert tensors["model.layers.0.self_attn.k_norm.weight"].shape == (c.num_key_value_heads * c.head_dim,)
    assert {t.dtype for t in tensors.values()} == {torch.float32}
    ids = _ids()
    with torch.no_grad():
        ref = independent_forward(folder)(ids).logits
        assert (r.trained(input_ids=ids).logits - ref).abs().max() <= HF_TOL
        assert (dl.load_hooked(folder)(ids) - ref).abs().max() <= TL_TOL


def test_loading_never_imports_recalibrate():
    """The format lives with loading; recalibrate uses it (no import circle through loading)."""
    import re

    root = Path(__file__).resolve().parents[2] / "drope_lens" / "loading"
    importing = re.compile(r"^\s*(from|import)\s+drope_lens\.recalibrate\b", re.M)
    offenders = [p.name for p in sorted(root.glob("*.py")) if importing.search(p.read_text())]
    assert offenders == []
    assert importing.search("    from drope_lens.recalibrate.checkpoint import read_meta")  # what it catches
