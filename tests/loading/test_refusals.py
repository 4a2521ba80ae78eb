"""Only supported architectures load, decided by the exact ``model_type``; everything else is refused with the list of
supported ones, before any weight (or even a safetensors header) is read.

Each refused folder holds a real tiny checkpoint (a Llama or Qwen2 that *would* load if the config were trusted),
so a loader that guessed from a prefix, a suffix or the tensor names would load it instead of refusing."""

from __future__ import annotations

import json

import pytest

from drope_lens.errors import UnsupportedModelError
from drope_lens.loading import load_hooked, load_pair
from drope_lens.loading.source import SUPPORTED_MODEL_TYPES, check_config
from drope_lens.testing import tiny_drope_checkpoint, tiny_llama

SUPPORTED_LIST = r"drope_lens supports Llama-family causal LMs and Qwen2/Qwen3: Llama .*Qwen2 .*Qwen3 "

#: (id, config edits, what the message says about it)
REFUSED = [
    ("mistral_drope", {"model_type": "mistral_drope", "architectures": ["DroPEMistralForCausalLM"]}, "'mistral_drope'"),
    ("gemma2", {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"]}, "'gemma2'"),
    ("llama_foo", {"model_type": "llama_foo"}, "'llama_foo'"),
    ("qwen2_moe", {"model_type": "qwen2_moe", "architectures": ["Qwen2MoeForCausalLM"]}, "'qwen2_moe'"),
    ("qwen3_drope", {"model_type": "qwen3_drope", "attention_type": "nope"}, "'qwen3_drope'"),
    ("drope_suffix_only", {"model_type": "drope", "attention_type": "nope"}, "'drope'"),
    (
        "llama_named_mistral",
        {"architectures": ["MistralForCausalLM"]},
        r"\['MistralForCausalLM'\] do not belong to Llama",
    ),
    (
        "qwen2_drope_as_llama_arch",
        {"model_type": "qwen2_drope", "architectures": ["DroPELlamaForCausalLM"]},
        "do not belong to Qwen2",
    ),
    (
        "no_model_type_unknown_arch",
        {"model_type": None, "architectures": ["GPTNeoXForCausalLM"]},
        "no single supported",
    ),
    ("seq_classifier", {"architectures": ["LlamaForSequenceClassification"]}, "do not belong to Llama"),
]


def _folder(tmp_path, name, edits, tokenizer):
    path = tiny_drope_checkpoint(tmp_path / name, attention_type="nope", tokenizer=tokenizer)
    cfg = json.loads((path / "config.json").read_text())
    if "attention_type" not in edits and edits.get("model_type", "llama_drope") != "llama_drope":
        cfg.pop("attention_type", None)
    for key, value in edits.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))
    return path


@pytest.fixture
def no_weights_read(monkeypatch):
    """Any read of a safetensors file (weights or header) or any HF model load fails the test."""
    import safetensors
    import transformers

    def refuse(*args, **kwargs):
        raise AssertionError(f"a weight file was opened: {args[:1]}")

    monkeypatch.setattr(safetensors, "safe_open", refuse)
    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(refuse))


@pytest.mark.parametrize("name, edits, says", REFUSED, ids=[r[0] for r in REFUSED])
def test_every_other_architecture_is_refused_before_any_weight(tmp_path, tokenizer, no_weights_read, name, edits, says):
    path = _folder(tmp_path, name, edits, tokenizer)
    for backend in (None, "bridge"):
        with pytest.raises(UnsupportedModelError, match=SUPPORTED_LIST) as exc:
            load_hooked(path, backend=backend)
        assert __import__("re").search(says, str(exc.value)), str(exc.value)
    with pytest.raises(UnsupportedModelError, match=SUPPORTED_LIST):
        load_pair(str(path))
    with pytest.raises(UnsupportedModelError):
        load_pair(None, str(path))  # as a --drope folder too, before the embedded model is loaded


def test_qwen3_with_drope_fields_is_refused(tmp_path, tokenizer, no_weights_read):
    """SakanaAI's format covers Llama and Qwen2; on Qwen3, ``self_attn.q_norm.weight`` is Qwen3's own per-head norm."""
    path = _folder(
        tmp_path,
        "q3",
        {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "attention_type": "qk_norm_nope"},
        tokenizer,
    )
    with pytest.raises(UnsupportedModelError, match="DroPE format covers Llama, Qwen2 only"):
        load_hooked(path)


def test_supported_model_types_are_exact():
    assert set(SUPPORTED_MODEL_TYPES) == {"llama", "smollm", "smollm2", "llama_drope", "qwen2", "qwen2_drope", "qwen3"}
    for model_type in SUPPORTED_MODEL_TYPES:
        assert check_config({"model_type": model_type})[0] is not None
    for near_miss in ("Llama", "llama2", "qwen", "qwen2.5", "qwen3_moe", "llama_drope2", " llama"):
        with pytest.raises(UnsupportedModelError):
            check_config({"model_type": near_miss})


def test_refused_folder_in_the_cli_check(tmp_path, tokenizer, no_weights_read):
    from drope_lens.cli.common import check_model_path

    path = _folder(tmp_path, "m", {"model_type": "mistral_drope"}, tokenizer)
    with pytest.raises(UnsupportedModelError, match="--drope .*model_type 'mistral_drope' is not one of them"):
        check_model_path(str(path), "--drope")


def test_a_supported_folder_still_loads(tmp_path, tokenizer):
    """The fixture's folders differ from loadable ones only by the edits above."""
    path = _folder(tmp_path, "ok", {}, tokenizer)
    assert load_hooked(path).cfg.is_nope
    hf = tiny_llama()
    hf.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    assert not load_hooked(tmp_path / "plain").cfg.is_nope
