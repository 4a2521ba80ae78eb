"""``--quantize``, ``--device-map`` and ``--max-memory`` on the CLI: parsed, checked before any model is loaded, and
handed to the loaders of every command (pair commands, ``--only``, ``track``); ``recalibrate`` refuses to train
quantized weights."""

from __future__ import annotations

import argparse
import json

import pytest

from drope_lens.cli import main
from drope_lens.cli.common import parse_device_map, parse_max_memory, placement_kwargs
from drope_lens.errors import DropeLensInputError
from drope_lens.loading.backend import hooked_available
from drope_lens.testing import tiny_llama, tiny_qwen2, tiny_qwen_tokenizer


@pytest.fixture
def folder(tmp_path, tokenizer):
    tiny_llama(seed=1).save_pretrained(tmp_path / "m")
    tokenizer.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


@pytest.fixture
def no_loading(monkeypatch):
    import transformers

    def never(*a, **k):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(transformers.PreTrainedModel, "from_pretrained", classmethod(never))


def test_parsing(tmp_path):
    assert parse_device_map("auto") == "auto"
    assert parse_device_map('{"model.layers.0": 0, "lm_head": 1}') == {"model.layers.0": 0, "lm_head": 1}
    (tmp_path / "map.json").write_text(json.dumps({"": "cuda:0"}))
    assert parse_device_map(str(tmp_path / "map.json")) == {"": "cuda:0"}
    with pytest.raises(DropeLensInputError, match="not a valid JSON object"):
        parse_device_map("{model: 0}")
    with pytest.raises(DropeLensInputError, match="no such file"):
        parse_device_map(str(tmp_path / "nope.json"))
    assert parse_max_memory("0=20GiB, 1=18GiB,cpu=64GiB") == {0: "20GiB", 1: "18GiB", "cpu": "64GiB"}
    with pytest.raises(DropeLensInputError, match="DEVICE=SIZE"):
        parse_max_memory("20GiB")
    ns = argparse.Namespace(quantize="none", device_map=None, max_memory=None)
    assert placement_kwargs(ns) == {"quantize": None, "device_map": None, "max_memory": None}


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--device-map", "everywhere"], "device_map must be one of"),
        (["--device-map", '{"model.layers.0": "disk"}'], "disk/meta offload"),
        (["--max-memory", "0=10GiB"], "max_memory needs a device_map"),
        (["--device-map", "auto", "--n-devices", "2"], "--device-map or --n-devices"),
    ],
)
def test_bad_placement_fails_before_loading(folder, no_loading, capsys, extra, message):
    assert main(["detect", "--rope", str(folder), *extra]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not hooked_available(), reason="HookedTransformer needs TransformerLens < 4")
def test_hooked_backend_with_what_only_the_bridge_does(folder, tmp_path, no_loading, capsys):
    assert main(["detect", "--rope", str(folder), "--quantize", "nf4", "--backend", "hooked"]) == 1
    assert "quantize='nf4' needs the bridge backend" in capsys.readouterr().err
    tiny_qwen2().save_pretrained(tmp_path / "q")
    tiny_qwen_tokenizer().save_pretrained(tmp_path / "q")
    assert main(["detect", "--rope", str(tmp_path / "q"), "--backend", "hooked"]) == 1
    assert "Qwen2 (Qwen2ForCausalLM) needs the bridge backend" in capsys.readouterr().err


def test_summary_in_nf4(folder, capsys):
    pytest.importorskip("bitsandbytes")
    assert main(["summary", "--rope", str(folder), "--quantize", "nf4", "--json", "-"]) == 0
    out = capsys.readouterr().out
    payload = json.loads(out[out.index("{") :])
    assert all(" nf4 (" in m["label"] for m in payload["models"].values())


def test_only_rope_honours_quantize_and_backend(folder, monkeypatch):
    """``detect --only rope`` loads one model itself: it gets the same options as the pair."""
    pytest.importorskip("bitsandbytes")
    from drope_lens.cli import massive_args

    args = argparse.Namespace(
        only="rope", rope=str(folder), drope=None, dtype="float32", device="cpu", backend=None, quantize="nf4"
    )
    args.device_map = args.max_memory = None
    [(role, model)] = massive_args.models_from_args(args)
    assert role == "rope" and model.cfg.quantization == "nf4"


def test_track_loads_checkpoints_quantized(folder):
    pytest.importorskip("bitsandbytes")
    from drope_lens.track.pipeline import TrackPoint, _load

    model = _load(TrackPoint("m", str(folder), "rope"), "float32", "cpu", "nf4")
    assert model.cfg.quantization == "nf4"


def test_recalibrate_refuses_to_train_quantized(capsys):
    assert main(["recalibrate", "--quantize", "nf4", "--max-steps", "1"]) == 1
    err = capsys.readouterr().err
    assert "trains every parameter" in err and "track RUN --quantize nf4" in err
