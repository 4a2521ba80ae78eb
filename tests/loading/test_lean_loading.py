"""Lean loading (safetensors tensor by tensor), to_nope(inplace), offloaded pairs, split devices."""

from __future__ import annotations

import json

import pytest
import torch

from drope_lens.loading import load_hooked, load_pair, to_nope
from drope_lens.testing import save_drope_checkpoint, tiny_llama, tiny_tokenizer


def _ids(n, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, vocab, (2, n), generator=g)


def _save(hf, path, dtype=None):
    if dtype is not None:
        hf = hf.to(dtype)
    hf.save_pretrained(str(path))
    tiny_tokenizer().save_pretrained(str(path))
    return path


def _assert_plain(model):
    """Every parameter a contiguous tensor (TransformerLens's layout), as a plain HookedTransformer has."""
    for name, p in model.named_parameters():
        assert p.is_contiguous(), name


def _same_model(a, b, ids):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k
        assert sa[k].stride() == sb[k].stride(), k
    with torch.no_grad():
        la, lb = a(ids), b(ids)
    assert torch.equal(la, lb)  # bit-identical


@pytest.mark.hooked
@pytest.mark.parametrize(
    "kw,save_dtype,dtype",
    [
        ({}, None, torch.float32),  # GQA + explicit head_dim
        ({"num_key_value_heads": 4, "head_dim": 16}, None, torch.float32),  # MHA
        ({"tie_word_embeddings": True}, None, torch.float32),
        ({}, torch.bfloat16, torch.float32),  # bf16 checkpoint, upcast
        ({}, torch.bfloat16, torch.bfloat16),
    ],
)
def test_lean_equals_old_loader(tmp_path, kw, save_dtype, dtype):
    hf = tiny_llama(seed=3, **kw)
    path = _save(hf, tmp_path / "m", save_dtype)
    lean = load_hooked(path, dtype=dtype)
    old = load_hooked(path, dtype=dtype, lean=False)
    _assert_plain(lean)
    _assert_plain(old)
    _same_model(lean, old, _ids(17, hf.config.vocab_size))
    if kw.get("tie_word_embeddings"):  # own storage, like the old loader's
        assert lean.unembed.W_U.data_ptr() != lean.embed.W_E.data_ptr()


@pytest.mark.hooked
@pytest.mark.parametrize("attention_type", ["nope", "qk_norm_nope"])
def test_lean_equals_old_loader_drope(tmp_path, attention_type):
    from safetensors.torch import load_file, save_file

    hf = tiny_llama(seed=4)
    path = save_drope_checkpoint(hf, tiny_tokenizer(), tmp_path / "d", attention_type=attention_type, softmax_scale=0.2)
    if attention_type != "nope":
        sd = load_file(str(path / "model.safetensors"))
        for i in range(2):
            sd[f"model.layers.{i}.self_attn.q_norm.weight"] = torch.rand(96) * 2
            sd[f"model.layers.{i}.self_attn.k_norm.weight"] = torch.rand(48) * 2
        save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    lean, old = load_hooked(path), load_hooked(path, lean=False)
    assert lean.cfg.is_nope and lean.cfg.softmax_scale == 0.2
    _same_model(lean, old, _ids(19, hf.config.vocab_size))


@pytest.mark.hooked
def test_lean_weights_do_not_alias_the_file(tmp_path):
    path = _save(tiny_llama(seed=3), tmp_path / "m", torch.bfloat16)
    model = load_hooked(path, dtype=torch.bfloat16)
    ids = _ids(11, len(tiny_tokenizer()))
    with torch.no_grad():
        before = model(ids)
    _save(tiny_llama(seed=9), tmp_path / "m", torch.bfloat16)  # overwrite the checkpoint
    with torch.no_grad():
        assert torch.equal(model(ids), before)


@pytest.mark.hooked
def test_lean_refuses_incomplete_checkpoint(tmp_path):
    from safetensors.torch import load_file, save_file

    path = _save(tiny_llama(), tmp_path / "m")
    sd = load_file(str(path / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="up_proj"):
        load_hooked(path)


@pytest.mark.hooked
def test_lean_refuses_shape_mismatch(tmp_path):
    path = _save(tiny_llama(), tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    cfg["intermediate_size"] = 80
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RuntimeError, match="disagree"):
        load_hooked(path)


@pytest.mark.hooked
def test_to_nope_inplace_equals_copy_and_shares_memory(tmp_path):
    path = _save(tiny_llama(seed=6), tmp_path / "m")
    ids = _ids(23, len(tiny_tokenizer()))
    copy = to_nope(load_hooked(path))
    model = load_hooked(path)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    same = to_nope(model, inplace=True)
    assert same is model and model.cfg.is_nope and model.cfg.rotary_dim == 0
    assert all(p.data_ptr() == ptrs[n] for n, p in model.named_parameters())  # nothing copied
    assert all(b.attn.cfg is model.cfg for b in model.blocks)
    with torch.no_grad():
        assert torch.equal(model(ids), copy(ids))
    with pytest.raises(ValueError, match="already"):
        to_nope(model, inplace=True)


# --------------------------------------------------------------------------- offloaded pairs


@pytest.fixture(scope="module")
def planted_models(tokenizer):
    from drope_lens.loading import hooked_from_hf
    from drope_lens.testing import plant_channels

    rope = hooked_from_hf(tiny_llama(seed=11), tokenizer)
    plant_channels(rope, {"q": [(0, 1, 3)], "k": [(1, 1, 2)]}, scale=30.0)
    return rope, to_nope(rope)


def _report_numbers(pair, tmp_path, steps):
    from drope_lens.report.runner import ReportOptions, run_report

    opts = ReportOptions(quick=True, n_seeds=3, max_length=40, steps=steps)
    results = run_report(pair, tmp_path, opts, progress=False)
    assert all(results["steps"][s]["status"] == "ran" for s in steps)
    return results["experiments"]


def test_offloaded_pair_same_numbers_and_one_model_on_device(planted_models, tmp_path, monkeypatch):
    """CPU-only emulation: device 'cpu:0' vs offload 'cpu' are distinct names for one memory, so the
    test records where each model was *sent* and checks, at every forward pass, that the running
    model was last sent to the device and the idle one to the offload device."""
    from drope_lens.loading import ModelPair, surface

    rope, nope = planted_models
    steps = ("massive", "phase", "disruption", "tasks")
    resident = _report_numbers(ModelPair(rope, nope), tmp_path / "a", steps)

    where: dict[int, str] = {id(rope): "cpu", id(nope): "cpu"}  # both built on the offload device
    real_place = surface.place

    def spy(model, device):
        where[id(model)] = str(device)
        return real_place(model, device)

    monkeypatch.setattr(surface, "place", spy)
    pair = ModelPair(rope, nope, device="cpu:0", offload="cpu")
    runs = []

    def check(role):
        me, other = (rope, nope) if role == "rope" else (nope, rope)

        def pre(module, args, kwargs):
            assert where.get(id(me)) == "cpu:0", f"{role} ran but was not sent to the device"
            assert where.get(id(other)) == "cpu", "the idle model was not sent to the offload device"
            runs.append(role)

        return me.register_forward_pre_hook(pre, with_kwargs=True)

    handles = [check("rope"), check("drope")]
    try:
        offloaded = _report_numbers(pair, tmp_path / "b", steps)
    finally:
        for h in handles:
            h.remove()
    assert not _diff(offloaded, resident), _diff(offloaded, resident)[:8]
    assert {"rope", "drope"} <= set(runs)
    # each model moves onto the device at most once per step, never twice in a row
    ons = [m for m in pair.moves if m[1] == "cpu:0"]
    assert len(ons) <= 2 * (len(steps) + 2), pair.moves  # + the report's attention views
    assert all(a != b for a, b in zip(ons, ons[1:], strict=False)), pair.moves
    # after the run exactly one model is on the device, the other was sent off
    assert sorted(where[id(m)] for m in (rope, nope)) == ["cpu", "cpu:0"]


def test_on_device_context_and_bad_role(planted_models):
    from drope_lens.loading import ModelPair

    rope, nope = planted_models
    pair = ModelPair(rope, nope, device="cpu", offload="cpu")
    with pair.on_device("drope") as m:
        assert m is nope and pair._resident == "drope"
    n = len(pair.moves)
    with pair.on_device("drope"):
        assert len(pair.moves) == n  # already there: no move
    assert [r for r, _ in pair.items()] == ["rope", "drope"]
    assert pair._resident == "drope" and pair.moves[-1] == ("drope", "cpu")
    assert [r for r, _ in ModelPair(rope, nope).items()] == ["rope", "drope"]
    with pytest.raises(ValueError, match="role"):
        pair.activate("nope")


def test_load_pair_offload_and_bad_names_fail_before_loading(tmp_path):
    path = _save(tiny_llama(seed=2), tmp_path / "m")
    with pytest.raises(RuntimeError):
        load_pair(str(path), offload="nowhere")
    with pytest.raises(ValueError, match="n_devices"):
        load_pair(str(path), n_devices=0)
    pair = load_pair(str(path), offload="cpu")
    assert pair.offload == "cpu" and pair.device == "cpu"


# --------------------------------------------------------------------------- split over devices


@pytest.mark.hooked
def test_two_device_split_keeps_hooks_working(tmp_path, monkeypatch):
    """TransformerLens-style emulation: n_devices=2 on CPU, with the block->device map spied on so
    the loader's and forward pass's placement decisions are checked; activations still match."""
    from transformer_lens.utilities import multi_gpu

    from drope_lens.analysis.massive import detect_massive
    from drope_lens.loading.hooked import lean as lean_mod

    path = _save(tiny_llama(seed=8), tmp_path / "m")
    one = load_hooked(path)
    asked = []
    real = multi_gpu.get_device_for_block_index

    def fake(index, cfg, device=None):
        asked.append(index)
        return torch.device("cpu")  # two "devices" that are both the CPU

    monkeypatch.setattr(lean_mod, "get_device_for_block_index", fake)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # TransformerLens's config check
    two = load_hooked(path, n_devices=2)
    assert two.cfg.n_devices == 2 and set(asked) == {0, 1}
    texts = ["the cat saw the dog . the dog ran", "one two three four five six"]
    a = detect_massive(one, texts, max_length=16, progress=False)
    b = detect_massive(two, texts, max_length=16, progress=False)
    assert a.to_dict() == b.to_dict()
    assert real is multi_gpu.get_device_for_block_index


def _diff(a, b, path=""):
    """Paths where two JSON-like trees differ (for readable failures)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{path}.{k} missing" for k in set(a) ^ set(b)]
        for k in set(a) & set(b):
            if k in ("wall_s", "seconds", "wall_seconds"):  # timings, the only thing allowed to differ
                continue
            out += _diff(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _diff(x, y, f"{path}[{i}]")]
    return [] if a == b or (a != a and b != b) else [f"{path}: {str(a)[:60]} != {str(b)[:60]}"]


# --------------------------------------------------------------------------- benchmarks


@pytest.mark.hooked
def test_memory_benchmark_tiny(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "mem.json"
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "memory.py"), "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=str(root),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows][:2] == ["load_hooked old", "load_hooked lean"]
    for r in rows:
        assert r["peak_rss"] >= r["imports_rss"] > 0 and r["model_bytes"] > 0
    pair = {r["config"]: r["model_bytes"] for r in rows}
    assert pair["load_pair lean"] == pair["load_pair old"] > pair["load_hooked lean"] == pair["load_hooked old"]


@pytest.mark.slow
def test_gpu_script_tiny_rehearsal(tmp_path):
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ, DROPE_GPU_TINY="1", DROPE_GPU_OUT=str(tmp_path), PYTHON=__import__("sys").executable)
    proc = subprocess.run(
        ["bash", str(root / "benchmarks" / "gpu.sh")],
        capture_output=True,
        text=True,
        cwd=str(root),
        env=env,
        timeout=1500,
    )
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert "[3/3]" in proc.stdout and "not complete" not in proc.stdout
    nf4 = json.loads((tmp_path / "results-gpu-nf4.json").read_text())  # the study's NF4 setup beside bf16
    assert nf4["model"] == "llama2-shaped-tiny" and set(nf4["rows"]) == {"bf16", "nf4"}
    assert all(nf4["rows"][q][r]["massive"] for q in ("bf16", "nf4") for r in ("rope", "drope"))
    results = json.loads((tmp_path / "results-gpu.json").read_text())
    assert results["settings"]["model"] == "llama2-shaped-tiny"  # the GPU run's code path, tiny shape
    cases = {c.get("as", c["case"]) for c in results["cases"]} | {c["case"] for c in results["cases"]}
    assert {"detection", "phase", "sinks", "disruption", "scaling"} <= cases
    failed = [(c["case"], c.get("reason")) for c in results["cases"] if c.get("status") != "ok"]
    assert not failed, failed
    assert (tmp_path / "results-gpu-memory.json").exists()
