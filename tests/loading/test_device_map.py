"""accelerate device maps on the bridge, emulated on the CPU.

For a map over several devices, transformers' ``from_pretrained`` calls ``accelerate.dispatch_model``, which puts
an ``AlignDevicesHook`` on every mapped module (moving that module's inputs onto its device) and records
``hf_device_map``. On one machine without GPUs every entry is ``"cpu"``, for which transformers dispatches
nothing; :func:`dispatched_loads` makes it dispatch exactly as for a multi-device map (``force_hooks=True``), as
TransformerLens's own ``n_devices`` tests spy on the block->device map. What this exercises: the map reaching HF,
the bridge booting over a dispatched model (hooks on every mapped module, ``cfg.device`` from the embedding),
DroPE's norms placed on each layer's execution device, analyses and numbers unchanged, a pair moving one model
on and off its map. What it cannot: tensors really crossing devices (cuda:0 -> cuda:1).
"""

from __future__ import annotations

import pytest
import torch

from drope_lens.errors import DropeLensInputError
from drope_lens.loading import load_hooked, load_pair
from drope_lens.loading.backend import hooked_available
from drope_lens.testing import TINY_TEXTS, tiny_drope_checkpoint, tiny_llama

pytest.importorskip("accelerate")

#: every module of a tiny Llama mapped, as HF's "auto" writes a map (one entry per decoder layer)
MAP = {
    "model.embed_tokens": "cpu",
    "model.rotary_emb": "cpu",
    "model.layers.0": "cpu",
    "model.layers.1": "cpu",
    "model.norm": "cpu",
    "lm_head": "cpu",
}
HOOKS = ("hook_q", "hook_k", "hook_v", "hook_rot_q", "hook_pattern", "hook_z")


@pytest.fixture
def dispatched_loads(monkeypatch):
    """HF dispatches (accelerate hooks, ``hf_device_map``) every model loaded with a device map; records the maps."""
    import transformers
    from accelerate import dispatch_model

    seen = []
    real = transformers.PreTrainedModel.from_pretrained.__func__

    def load(cls, *args, **kwargs):
        model = real(cls, *args, **kwargs)
        if isinstance(kwargs.get("device_map"), dict):
            seen.append((kwargs["device_map"], kwargs.get("max_memory")))
            dispatch_model(model, device_map=kwargs["device_map"], force_hooks=True)
        return model

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(load))
    return seen


@pytest.fixture
def folder(tmp_path, tokenizer):
    tiny_llama(seed=9).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def _run(model, ids):
    names = {f"blocks.{layer}.attn.{h}" for layer in range(model.cfg.n_layers) for h in HOOKS}
    names |= {f"blocks.{layer}.hook_resid_post" for layer in range(model.cfg.n_layers)}
    with torch.no_grad():
        logits, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
    return logits, {n: cache[n] for n in names}


def _same(a, b):
    (la, ca), (lb, cb) = a, b
    assert torch.equal(la, lb)
    for name in ca:
        assert torch.equal(ca[name], cb[name]), name


def _hooked_modules(model):
    return {n for n, m in model.original_model.named_modules() if "_hf_hook" in m.__dict__}


def test_device_map_keeps_hooks_numbers_and_analyses(folder, dispatched_loads):
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.analysis.perplexity import perplexity

    mapped = load_hooked(folder, device_map=MAP, max_memory={"cpu": "2GiB"})
    assert dispatched_loads == [(MAP, {"cpu": "2GiB"})]  # the map and budget reached from_pretrained
    hf = mapped.original_model
    assert hf.hf_device_map == MAP and mapped.cfg.device == "cpu"
    assert {"model.layers.0", "model.layers.1", "lm_head"} <= {
        n.replace("._original_component", "") for n in _hooked_modules(mapped)
    }
    plain = load_hooked(folder, backend="bridge")
    ids = torch.randint(4, mapped.cfg.d_vocab, (2, 20), generator=torch.Generator().manual_seed(1))
    _same(_run(mapped, ids), _run(plain, ids))
    texts = list(TINY_TEXTS)
    assert detect_massive(mapped, texts).to_dict() == detect_massive(plain, texts).to_dict()
    assert perplexity(mapped, texts).ppl == perplexity(plain, texts).ppl
    from drope_lens.runs.provenance import model_provenance

    assert model_provenance(mapped, "x")["device_map"] == MAP
    assert model_provenance(plain, "x")["device_map"] is None


def test_device_mapped_drope_checkpoint_puts_its_norms_on_each_layers_device(tmp_path, tokenizer, dispatched_loads):
    from drope_lens.loading.bridge import devices

    path = tiny_drope_checkpoint(tmp_path / "d", attention_type="qk_norm_nope", tokenizer=tokenizer)
    mapped = load_hooked(path, device_map=MAP)
    for block in mapped.original_model.model.layers:
        assert block.self_attn.drope_q_norm.weight.device == devices.execution_device(block)
        assert block.self_attn.drope_q_norm.weight.dtype == torch.float32
    ids = torch.randint(4, mapped.cfg.d_vocab, (2, 16), generator=torch.Generator().manual_seed(2))
    _same(_run(mapped, ids), _run(load_hooked(path, backend="bridge"), ids))


def test_pair_on_a_device_map_one_model_at_a_time(folder, dispatched_loads):
    """``offload`` with a device map: each model loads onto its map, goes to ``offload``, and comes back to its
    map (accelerate's hooks included) when used; never both on the map."""
    from drope_lens.analysis.massive import detect_massive

    pair = load_pair(str(folder), device_map=MAP, offload="cpu")
    assert len(dispatched_loads) == 2  # the twin of a device-mapped model is loaded again, with its own map
    assert not _hooked_modules(pair.rope) and not _hooked_modules(pair.drope)  # both parked after loading
    with pair.on_device("rope") as model:
        assert _hooked_modules(model) and not _hooked_modules(pair.drope)
    with pair.on_device("drope") as model:
        assert _hooked_modules(model) and not _hooked_modules(pair.rope)
    assert pair.moves == [("rope", "device_map"), ("rope", "cpu"), ("drope", "device_map")]
    plain = load_pair(str(folder), backend="bridge")
    for role, model in pair.items():
        want = detect_massive(getattr(plain, role), list(TINY_TEXTS)).to_dict()
        assert detect_massive(model, list(TINY_TEXTS)).to_dict() == want, role


def test_pair_both_on_their_maps(folder, dispatched_loads):
    pair = load_pair(str(folder), device_map=MAP)
    assert _hooked_modules(pair.rope) and _hooked_modules(pair.drope) and pair.drope.cfg.is_nope
    ids = torch.randint(4, pair.rope.cfg.d_vocab, (1, 12), generator=torch.Generator().manual_seed(3))
    plain = load_pair(str(folder), backend="bridge")
    for role in ("rope", "drope"):
        _same(_run(getattr(pair, role), ids), _run(getattr(plain, role), ids))


# ------------------------------------------------------------------------------------ refused before loading
@pytest.mark.parametrize(
    "device_map, max_memory, message",
    [
        ({**MAP, "model.layers.1": "disk"}, None, r"\['disk'\]: accelerate's disk/meta offload"),
        ({**MAP, "model.layers.1": "meta"}, None, r"\['meta'\]"),
        ({**MAP, "model.layers.1": 0}, None, "mixes CPU and GPU entries"),
        ({**MAP, "lm_head": "cuda:1"}, None, "mixes CPU and GPU entries"),
        ("everywhere", None, "device_map must be one of"),
        ({}, None, "empty dict"),
        ("auto", {"disk": "10GiB"}, "disk offload is not supported"),
        (None, {0: "10GiB"}, "max_memory needs a device_map"),
    ],
)
def test_maps_the_bridge_cannot_run_are_refused_before_loading(folder, monkeypatch, device_map, max_memory, message):
    import transformers

    def never(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(never))
    with pytest.raises(DropeLensInputError, match=message):
        load_hooked(folder, device_map=device_map, max_memory=max_memory)
    with pytest.raises(DropeLensInputError, match=message):
        load_pair(str(folder), device_map=device_map, max_memory=max_memory)


def test_a_realised_map_that_spilled_is_refused():
    """An "auto" map that did not fit the GPUs comes back with CPU (or disk) entries: refused after HF's load."""
    from drope_lens.loading.bridge.devices import check_realised

    class Spilled(torch.nn.Module):
        hf_device_map = {"model.layers.0": 0, "model.layers.1": "cpu"}

    with pytest.raises(DropeLensInputError, match="does not fit the GPUs given"):
        check_realised(Spilled())


def test_device_map_and_the_hooked_backend(folder):
    if hooked_available():
        with pytest.raises(DropeLensInputError, match="device_map/max_memory needs the bridge backend"):
            load_hooked(folder, device_map=MAP, backend="hooked")
    with pytest.raises(ValueError, match="Give device_map or n_devices"):
        load_pair(str(folder), device_map=MAP, n_devices=2)
