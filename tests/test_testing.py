"""drope_lens.testing: the public tiny models are what they say (checked against plain HF and known answers)."""

import json
import math

import pytest
import torch

from drope_lens.analysis.massive import detect_massive
from drope_lens.loading import encode, load_hooked
from drope_lens.testing import (
    TINY_TEXTS,
    analytic_bos_attention,
    analytic_sink_model,
    hf_nope_reference,
    plant_channels,
    tiny_drope_checkpoint,
    tiny_hooked,
    tiny_llama,
    tiny_tokenizer,
)


@pytest.mark.parametrize("gqa, kv", [(True, 2), (False, 4)])
@pytest.mark.parametrize("pe", ["rope", "nope"])
def test_tiny_hooked_matches_hf(gqa, kv, pe):
    hf = tiny_llama(seed=3, gqa=gqa)
    assert hf.config.num_key_value_heads == kv and hf.config.num_attention_heads == 4
    tl = tiny_hooked(seed=3, gqa=gqa, position_encoding=pe)
    assert tl.cfg.position_encoding == pe and tl.cfg.n_layers == 2 and tl.cfg.d_head == 24
    ref = hf_nope_reference(hf) if pe == "nope" else hf
    ids = torch.randint(4, hf.config.vocab_size, (2, 17), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert float((tl(ids) - ref(ids).logits).abs().max()) <= 1e-4


@pytest.mark.parametrize(
    "attention_type, norms",
    [
        ("nope", ()),
        ("q_norm_nope", ("q",)),
        ("k_norm_nope", ("k",)),
        ("qk_norm_nope", ("q", "k")),
    ],
)
@pytest.mark.parametrize("gqa", [True, False])
def test_tiny_drope_checkpoint_is_sakana_format_and_loads_like_the_hf_reference(tmp_path, attention_type, norms, gqa):
    from safetensors.torch import load_file

    path = tiny_drope_checkpoint(
        tmp_path / "d", attention_type=attention_type, softmax_scale=0.07, gain_seed=4, gqa=gqa
    )
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "llama_drope" and cfg["attention_type"] == attention_type
    assert cfg["softmax_scale"] == 0.07 and "AutoModelForCausalLM" in cfg["auto_map"]
    sd = load_file(str(path / "model.safetensors"))
    found = {k.split(".")[-2] for k in sd if k.endswith("_norm.weight") and ".self_attn." in k}
    assert found == {f"{n}_norm" for n in norms}
    gains = {n: [sd[f"model.layers.{i}.self_attn.{n}_norm.weight"] for i in range(2)] for n in norms}
    for g in gains.values():
        assert not torch.equal(g[0], torch.ones_like(g[0])) and float(g[0].min()) >= 0 and float(g[0].max()) < 3
    tl = load_hooked(path)
    assert tl.cfg.position_encoding == "nope" and tl.cfg.drope_attention_type == attention_type
    ref = hf_nope_reference(
        tiny_llama(seed=5, gqa=gqa), softmax_scale=0.07, q_norms=gains.get("q"), k_norms=gains.get("k")
    )
    ids = torch.randint(4, ref.config.vocab_size, (2, 21), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert float((tl(ids) - ref(ids).logits).abs().max()) <= 1e-4


def test_tiny_drope_checkpoint_default_gains_are_ones(tmp_path):
    from safetensors.torch import load_file

    sd = load_file(str(tiny_drope_checkpoint(tmp_path / "d", gain_seed=None) / "model.safetensors"))
    assert torch.equal(sd["model.layers.1.self_attn.k_norm.weight"], torch.ones(2 * 24))


def test_planted_channels_are_the_ones_found():
    plants = {"q": [(0, 1, 5)], "k": [(1, 0, 7)]}
    model = plant_channels(tiny_hooked(), plants)
    res = detect_massive(model, list(TINY_TEXTS))
    for tensor, [(layer, head, dim)] in plants.items():
        top = res.top_channels(tensor, n=1)[0]
        assert (top["layer"], top["head"], top["dim"]) == (layer, head, dim)


def test_tiny_tokenizer_round_trips_texts():
    tok = tiny_tokenizer()
    ids = tok(TINY_TEXTS[0], add_special_tokens=False)["input_ids"]
    assert tok.unk_token_id not in ids and tok.decode(ids) == TINY_TEXTS[0]


@pytest.mark.parametrize("include_bos_row", [False, True])
def test_analytic_sink_model_attends_to_bos_as_its_closed_form_says(include_bos_row):
    tok = tiny_tokenizer()
    logits = [[4.0, 0.0, -2.0, 1.5], [-1.0, 3.0, 0.5, 2.0]]
    model, bos = analytic_sink_model(tok, logits)
    ids = encode(tok, [TINY_TEXTS[1]]).tokens
    n = ids.shape[1]
    assert int(ids[0, 0]) == bos
    _, cache = model.run_with_cache(ids, names_filter=lambda name: name.endswith("hook_pattern"))
    start = 0 if include_bos_row else 1
    for layer, heads in enumerate(logits):
        col = cache["pattern", layer][0, :, :, 0].double()  # [head, q]: attention of each query to BOS
        for h, b in enumerate(heads):
            e = math.exp(b)
            assert float((col[h] - e / (e + torch.arange(n, dtype=torch.float64))).abs().max()) <= 1e-6
            mean = float(col[h, start:].mean())
            assert mean == pytest.approx(analytic_bos_attention(b, n, include_bos_row=include_bos_row), abs=1e-6)
