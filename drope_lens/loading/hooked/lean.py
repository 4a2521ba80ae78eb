"""Lean loading: safetensors straight into the HookedTransformer's parameters, one tensor at a time.

The old path (:func:`~drope_lens.loading.hf.hooked_from_hf`) holds the HF model, TransformerLens's
converted state dict and the HookedTransformer at once (~2.2x the model's bytes in host RAM). Here:

* the HookedTransformer is built with ``init_weights=False``: its parameters are ``torch.empty`` on
  the CPU, whose pages are never touched (no resident memory) and are freed as each is replaced;
* every checkpoint tensor is read on its own from the safetensors file (``safe_open``), cast to the
  model dtype, moved to the device of the block that owns it (so loading to a GPU stages one tensor
  on the CPU, never the model) and laid out as a contiguous TransformerLens parameter (one more
  copy of that one tensor while it is rearranged);
* tied embeddings get two tensors of their own (like the old path), read twice from the file;
* biases (TransformerLens has them, Llama does not) are zeros on the target device.

Peak host memory is then the final model plus one or two tensors (and the imports). Values are the very
same bits as the old path's (a cast and a copy, no arithmetic), so logits are bit-identical (tested).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn
from transformer_lens import HookedTransformer
from transformer_lens.utilities.multi_gpu import get_device_for_block_index

from drope_lens.loading.hooked.config import DropeLensConfig


def checkpoint_folder(source: Union[str, os.PathLike]) -> Optional[Path]:
    """The local folder holding ``source``'s safetensors (hub ids: downloaded), or None if it has none."""
    path = Path(os.path.expanduser(str(source)))
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(source), allow_patterns=["*.safetensors", "*.json"]))
    return path if any(path.glob("*.safetensors")) else None


def _index(folder: Path) -> dict[str, Path]:
    """Tensor name -> safetensors file, for every ``*.safetensors`` file in ``folder``."""
    from safetensors import safe_open

    where: dict[str, Path] = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                where[key] = file
    return where


def _target_device(name: str, cfg: DropeLensConfig) -> torch.device:
    """The device TransformerLens puts parameter ``name`` on (blocks split over ``cfg.n_devices``)."""
    if name.startswith("blocks."):
        return get_device_for_block_index(int(name.split(".")[1]), cfg)
    if name.startswith(("ln_final", "unembed")):
        return get_device_for_block_index(cfg.n_layers - 1, cfg)
    return get_device_for_block_index(0, cfg)


def _rules(cfg: DropeLensConfig, tied: bool) -> dict[str, tuple[str, Callable[[torch.Tensor], torch.Tensor]]]:
    """TransformerLens parameter name -> (HF tensor name, view from the HF layout to TL's shape)."""
    n, d, m = cfg.n_heads, cfg.d_head, cfg.d_model
    n_kv = cfg.n_key_value_heads or n
    kv = "_" if cfg.n_key_value_heads is not None else ""
    same = lambda t: t  # noqa: E731
    heads_in = lambda h: lambda t: t.view(h, d, m).permute(0, 2, 1)  # noqa: E731
    heads_out = lambda t: t.view(m, n, d).permute(1, 2, 0)  # noqa: E731
    transposed = lambda t: t.T  # noqa: E731
    rules = {
        "embed.W_E": ("model.embed_tokens.weight", same),
        "ln_final.w": ("model.norm.weight", same),
        "unembed.W_U": ("model.embed_tokens.weight" if tied else "lm_head.weight", transposed),
    }
    for layer in range(cfg.n_layers):
        hf, tl = f"model.layers.{layer}.", f"blocks.{layer}."
        rules.update(
            {
                tl + "ln1.w": (hf + "input_layernorm.weight", same),
                tl + "ln2.w": (hf + "post_attention_layernorm.weight", same),
                tl + "attn.W_Q": (hf + "self_attn.q_proj.weight", heads_in(n)),
                tl + f"attn.{kv}W_K": (hf + "self_attn.k_proj.weight", heads_in(n_kv)),
                tl + f"attn.{kv}W_V": (hf + "self_attn.v_proj.weight", heads_in(n_kv)),
                tl + "attn.W_O": (hf + "self_attn.o_proj.weight", heads_out),
                tl + "mlp.W_in": (hf + "mlp.up_proj.weight", transposed),
                tl + "mlp.W_gate": (hf + "mlp.gate_proj.weight", transposed),
                tl + "mlp.W_out": (hf + "mlp.down_proj.weight", transposed),
            }
        )
    return rules


def _read_owned(file: Path, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """One tensor, cast and moved, in memory of its own (never a view of the file's mapping).

    The file is opened per tensor: safetensors memory-maps it, and the pages read stay resident
    while it is open, which for a whole-file loop would add the checkpoint's size to the peak. A
    tensor still backed by the mapping (same dtype, CPU) is copied, so the model does not change
    if the file is overwritten and its memory shows as the process's own.
    """
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        raw = f.get_tensor(name)
        out = raw.to(device=device, dtype=dtype)
        if out.data_ptr() == raw.data_ptr():
            out = out.clone()
    del raw
    return out


def _set_param(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, leaf = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    old = getattr(module, leaf)
    setattr(module, leaf, nn.Parameter(value, requires_grad=old.requires_grad))


def lean_hooked(
    folder: Path,
    cfg: DropeLensConfig,
    tokenizer: Any,
    *,
    tied: bool,
    model_class: type = HookedTransformer,
) -> HookedTransformer:
    """Build a HookedTransformer for ``cfg`` and fill it tensor by tensor from ``folder``'s safetensors.

    ``cfg.device`` / ``cfg.n_devices`` say where each block's parameters go; ``model_class`` is
    HookedTransformer or a subclass (e.g. SAELens's HookedSAETransformer). Raises ``RuntimeError``
    naming the tensor when the checkpoint lacks one or its shape does not fit the config.
    """
    where = _index(folder)
    rules = _rules(cfg, tied)
    missing = sorted({hf for hf, _ in rules.values() if hf not in where})
    if missing:
        raise RuntimeError(
            f"{folder} lacks {len(missing)} tensors the config needs, e.g. {missing[:3]}. "
            "The checkpoint is incomplete or not a Llama-family model."
        )
    cfg.init_weights = False  # parameters stay torch.empty (untouched pages) until replaced below
    try:
        model = model_class(cfg, tokenizer=tokenizer, move_to_device=False)
    finally:
        cfg.init_weights = True
    # Buffers (rotary sin/cos, masks) are small; put them where their module's parameters go.
    for mod_name, module in model.named_modules():
        for buf_name, buf in list(module.named_buffers(recurse=False)):
            device = _target_device(f"{mod_name}.{buf_name}", cfg)
            if buf.device != device:
                module._buffers[buf_name] = buf.to(device)
    for name, param in list(model.named_parameters()):
        device = _target_device(name, cfg)
        if name not in rules:
            if name.rsplit(".", 1)[-1].lstrip("_").startswith("b_"):
                _set_param(model, name, torch.zeros(param.shape, dtype=cfg.dtype, device=device))
                continue
            raise RuntimeError(f"drope_lens does not know where to load {name} from.")
        hf_name, view = rules[name]
        tensor = _read_owned(where[hf_name], hf_name, device, cfg.dtype)
        value = view(tensor)
        if value.shape != param.shape:
            raise RuntimeError(
                f"{hf_name} has shape {tuple(tensor.shape)}, which does not fit {name} "
                f"{tuple(param.shape)}: config.json and the weights disagree."
            )
        _set_param(model, name, value.contiguous())
        del tensor, value
    model.eval()
    return model


def read_tensor_subset(folder: Path, names: list[str]) -> dict[str, torch.Tensor]:
    """Only the named tensors of ``folder``'s safetensors (e.g. DroPE's q/k-norm weights)."""
    from safetensors import safe_open

    where = _index(folder)
    out = {}
    for name in names:
        if name in where:
            with safe_open(str(where[name]), framework="pt") as f:
                out[name] = f.get_tensor(name)
    return out
