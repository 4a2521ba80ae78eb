"""SAELens: every loader builds a HookedSAETransformer with every drope_lens patch; SAEs work at any hook point.

Skipped only where SAELens cannot be installed (TransformerLens >= 4, which has no HookedTransformer); on
TransformerLens 3.9 a missing ``sae_lens`` is an error (``make setup`` installs the ``sae`` extra).
"""

from __future__ import annotations

import copy
import io

import pytest
import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.loading import hooked_from_hf, load_hooked, load_pair, tl_version, to_nope
from drope_lens.testing import tiny_drope_checkpoint, tiny_llama

try:
    from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata
except ImportError:
    if tl_version() >= (4,):
        pytest.skip("SAELens needs TransformerLens < 4 (HookedTransformer)", allow_module_level=True)
    raise

from drope_lens.loading.hooked.attention import QKNormAttention  # noqa: E402  (HookedTransformer backend)
from drope_lens.loading.hooked.fast_attention import fast_path_installed  # noqa: E402
from drope_lens.loading.hooked.zero_bias import ZeroBiasGatedMLP, ZeroBiasUnembed  # noqa: E402
from tests.support import SdpaSpy  # noqa: E402

pytestmark = pytest.mark.hooked  # HookedTransformer only

T = 11  # sequence length of the test ids (an SAE at hook_pattern reads the key axis: d_in = T)
TOL = 1e-4


def _ids(model, n=T):
    return torch.randint(4, model.cfg.d_vocab, (2, n), generator=torch.Generator().manual_seed(0))


def _sae(hook_name: str, d_in: int, *, seed: int = 0, reshape: str = "none") -> StandardSAE:
    torch.manual_seed(seed)
    cfg = StandardSAEConfig(
        d_in=d_in, d_sae=2 * d_in, metadata=SAEMetadata(hook_name=hook_name), reshape_activations=reshape
    )
    return StandardSAE(cfg)


def _saes(model) -> list[StandardSAE]:
    """One SAE at each kind of hook point: attention pattern, z, residual stream, MLP out, MLP in."""
    cfg = model.cfg
    return [
        _sae("blocks.0.attn.hook_pattern", T, seed=1),
        _sae("blocks.1.attn.hook_z", cfg.n_heads * cfg.d_head, seed=2, reshape="hook_z"),
        _sae("blocks.0.hook_resid_post", cfg.d_model, seed=3),
        _sae("blocks.1.hook_mlp_out", cfg.d_model, seed=4),
        _sae("blocks.0.mlp.hook_in", cfg.d_model, seed=5),
    ]


def _assert_patched(model, *, qk_norm: bool = False):
    assert isinstance(model, HookedSAETransformer)
    assert fast_path_installed(model) and model.cfg.fast_attention
    assert isinstance(model.unembed, ZeroBiasUnembed)
    for block in model.blocks:
        assert isinstance(block.mlp, ZeroBiasGatedMLP) and "forward" not in block.mlp.__dict__
        assert "hook_in" in block.mlp._modules
        assert isinstance(block.attn, QKNormAttention) == qk_norm
        if qk_norm:
            assert block.attn.drope_q_norm is not None and block.attn.drope_k_norm is not None


def _logits(model, ids):
    with torch.no_grad():
        return model(ids)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("sae")
    rope = root / "rope"
    tiny_llama(seed=3).save_pretrained(str(rope))
    tokenizer.save_pretrained(str(rope))
    drope = tiny_drope_checkpoint(root / "drope", attention_type="qk_norm_nope", gain_seed=2, tokenizer=tokenizer)
    return {"rope": rope, "drope": drope}


LOADERS = {
    "hooked_from_hf": lambda f, cls: hooked_from_hf(tiny_llama(seed=3), _tok(f), model_class=cls),
    "load_hooked lean": lambda f, cls: load_hooked(f["rope"], model_class=cls),
    "load_hooked hf": lambda f, cls: load_hooked(f["rope"], lean=False, model_class=cls),
    "load_hooked drope lean": lambda f, cls: load_hooked(f["drope"], model_class=cls),
    "load_hooked drope hf": lambda f, cls: load_hooked(f["drope"], lean=False, model_class=cls),
    "to_nope": lambda f, cls: to_nope(load_hooked(f["rope"]), model_class=cls),
    "to_nope keeps class": lambda f, cls: to_nope(load_hooked(f["rope"], model_class=cls)),
    "to_nope inplace": lambda f, cls: to_nope(load_hooked(f["rope"], model_class=cls), inplace=True),
    "load_pair rope": lambda f, cls: load_pair(str(f["rope"]), model_class=cls).rope,
    "load_pair nope twin": lambda f, cls: load_pair(str(f["rope"]), model_class=cls).drope,
    "load_pair drope": lambda f, cls: load_pair(str(f["rope"]), str(f["drope"]), model_class=cls).drope,
}


def _tok(folders):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folders["rope"]))


def _plain(name, folders):
    """The same model as a plain drope_lens HookedTransformer (what the HookedSAETransformer must equal)."""
    if name.startswith("to_nope") or name == "load_pair nope twin":
        return to_nope(load_hooked(folders["rope"]))
    if "drope" in name:
        return load_hooked(folders["drope"])
    return load_hooked(folders["rope"])


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_every_loader_gives_a_patched_hooked_sae_transformer(name, folders, monkeypatch):
    model = LOADERS[name](folders, HookedSAETransformer)
    _assert_patched(model, qk_norm="drope" in name)
    ids = _ids(model)
    plain = _logits(_plain(name, folders), ids)
    spy = SdpaSpy(monkeypatch)
    ref = _logits(model, ids)
    assert torch.equal(ref, plain)  # every patch and DroPE q/k norm in place: bit-identical
    assert spy.calls == model.cfg.n_layers
    saes = _saes(model)
    with torch.no_grad():
        spliced = model.run_with_saes(ids, saes=saes, use_error_term=True)
        assert (spliced - ref).abs().max() <= TOL
        assert not torch.allclose(model.run_with_saes(ids, saes=saes[2:3]), ref, atol=1e-2)  # the SAE is used
    assert not model.acts_to_saes  # all removed again


def test_sae_at_hook_pattern_sends_only_that_layer_down_the_explicit_path(folders, monkeypatch):
    model = load_hooked(folders["drope"], model_class=HookedSAETransformer)
    ids = _ids(model)
    ref = _logits(model, ids)
    spy = SdpaSpy(monkeypatch)
    sae = _sae("blocks.1.attn.hook_pattern", T, seed=7)
    with torch.no_grad():
        logits, cache = model.run_with_cache_with_saes(
            ids, saes=[sae], use_error_term=True, names_filter=lambda name: ".hook_sae_" in name
        )
    assert spy.calls == model.cfg.n_layers - 1  # layer 1 computed its pattern, the others used sdpa
    assert (logits - ref).abs().max() <= TOL
    acts = cache["blocks.1.attn.hook_pattern.hook_sae_acts_post"]
    assert acts.shape == (2, model.cfg.n_heads, T, 2 * T)
    rows = cache["blocks.1.attn.hook_pattern.hook_sae_input"].sum(-1)  # the real pattern: rows sum to 1
    torch.testing.assert_close(rows, torch.ones_like(rows))
    with torch.no_grad():  # without the error term the reconstruction replaces the pattern
        assert not torch.allclose(model.run_with_saes(ids, saes=[sae]), ref, atol=1e-3)
    spy.calls = 0
    assert torch.equal(_logits(model, ids), ref) and spy.calls == model.cfg.n_layers  # detached again


def test_attached_sae_and_hooks_compose(folders):
    model = load_hooked(folders["rope"], model_class=HookedSAETransformer)
    ids = _ids(model)
    ref = _logits(model, ids)
    seen = {}
    model.add_sae(_sae("blocks.0.hook_resid_post", model.cfg.d_model, seed=8), use_error_term=True)
    hooks = [
        ("blocks.0.mlp.hook_in", lambda x, hook: seen.setdefault("mlp_in", x.clone())),
        ("blocks.1.attn.hook_pattern", lambda x, hook: seen.setdefault("pattern", x.clone())),
    ]
    with torch.no_grad():
        out = model.run_with_hooks(ids, fwd_hooks=hooks)
    assert (out - ref).abs().max() <= TOL and seen["mlp_in"].shape == (2, T, model.cfg.d_model)
    assert seen["pattern"].shape == (2, model.cfg.n_heads, T, T)
    model.reset_saes()
    assert torch.equal(_logits(model, ids), ref)


@pytest.mark.parametrize("how", ["torch.save", "deepcopy"])
def test_hooked_sae_transformer_round_trips(how, folders):
    model = load_hooked(folders["drope"], model_class=HookedSAETransformer)
    ids = _ids(model)
    ref = _logits(model, ids)
    if how == "torch.save":
        buf = io.BytesIO()
        torch.save(model, buf)
        buf.seek(0)
        twin = torch.load(buf, weights_only=False)
    else:
        twin = copy.deepcopy(model)
    _assert_patched(twin, qk_norm=True)
    assert torch.equal(_logits(twin, ids), ref)
    fired = []
    twin.blocks[0].mlp.hook_in.add_hook(lambda x, hook: fired.append(hook.name))
    _logits(model, ids)  # the source's forward does not reach the copy's hook ...
    assert fired == []
    _logits(twin, ids)  # ... the copy's does (SAELens's hook_in lambda would call the source's MLP)
    assert fired == ["blocks.0.mlp.hook_in"]
    twin.reset_hooks()
    with torch.no_grad():
        out = twin.run_with_saes(ids, saes=_saes(twin), use_error_term=True)
    assert (out - ref).abs().max() <= TOL


def test_model_class_is_refused_on_the_bridge_and_checked(folders):
    with pytest.raises(DropeLensInputError, match="hooked"):
        load_hooked(folders["rope"], backend="bridge", model_class=HookedSAETransformer)
    with pytest.raises(DropeLensInputError, match="TransformerLens < 4"):
        load_pair(str(folders["rope"]), backend="bridge", model_class=HookedSAETransformer)
    with pytest.raises(TypeError, match="subclass"):
        load_hooked(folders["rope"], model_class=torch.nn.Module)
    plain = load_hooked(folders["rope"])
    with pytest.raises(TypeError, match="inplace"):
        to_nope(plain, inplace=True, model_class=HookedSAETransformer)
