"""One-call phase profile / experiment: export, conditions, perplexity, CLI."""

import json

import numpy as np
import pytest

from drope_lens.analysis.interventions import phase_experiment
from drope_lens.analysis.profile import PhaseProfile
from drope_lens.analysis.profile_pass import phase_profile
from drope_lens.hooks.bos import bos_mlp_ablation_hooks
from drope_lens.hooks.conditions import condition_hooks
from drope_lens.loading import hooked_from_hf
from drope_lens.testing import tiny_llama

TEXTS = [
    "the cat saw the dog",
    "a big red car went fast on the long road to rome",
    "she said yes and they went home",
    "one two three four five six",
]


@pytest.fixture(scope="module")
def model(tokenizer):
    return hooked_from_hf(tiny_llama(seed=7, num_hidden_layers=3), tokenizer)


def test_profile_exports(model):
    prof = phase_profile(model, TEXTS, batch_size=3)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    d = json.loads(json.dumps(prof.to_dict(per_text=True)))
    assert set(d["layers"]) >= {
        "sink_rate",
        "sink_rate_std",
        "gu_rate",
        "bos_norm",
        "bos_ratio",
        "entropy_sq",
        "entropy_norm",
        "anisotropy",
    }
    assert len(d["layers"]["bos_ratio"]) == L and np.shape(d["sink_score"]) == (L, H)
    assert np.shape(d["per_text"]["sink_scores"]) == (len(TEXTS), L, H)
    assert d["options"] == {
        "tau": 0.3,
        "gu_eps": 0.3,
        "include_bos_row": False,
        "last_layer": "resid",
        "attention": "native",
        "spike_threshold": 2.0,
        "sinks_from": "stream",
    }
    assert d["position_encoding"] == "rope"
    df = prof.to_dataframe()
    assert list(df["layer"]) == list(range(L)) and np.allclose(df["bos_ratio"], prof.layer_stats()["bos_ratio"])
    assert len(prof.head_dataframe()) == L * H
    s = d["summary"]
    assert s["spike_layer_argmax"] == int(np.argmax(d["layers"]["bos_ratio"]))
    assert s["min_entropy_sq"] == pytest.approx(min(d["layers"]["entropy_sq"]))
    assert isinstance(prof, PhaseProfile)


def test_seeded_runs_are_identical(model):
    a, b = phase_profile(model, TEXTS), phase_profile(model, TEXTS)
    assert np.array_equal(a.sink_scores_per_text, b.sink_scores_per_text)
    assert np.array_equal(a.entropy_sq_per_text, b.entropy_sq_per_text, equal_nan=True)


def test_profile_under_bos_ablation_changes_only_later_layers(model):
    base = phase_profile(model, TEXTS)
    abl = phase_profile(model, TEXTS, fwd_hooks=bos_mlp_ablation_hooks(1, model=model))
    assert np.array_equal(base.bos_norm_per_text[:, :1], abl.bos_norm_per_text[:, :1])
    assert np.array_equal(base.sink_scores_per_text[:, :2], abl.sink_scores_per_text[:, :2])
    assert np.abs(base.bos_norm_per_text[:, 1:] - abl.bos_norm_per_text[:, 1:]).max() > 1e-3


def test_condition_hooks(model):
    assert condition_hooks(model, "baseline") == []
    names = lambda hooks: {n for n, _ in hooks}  # noqa: E731
    bos = names(condition_hooks(model, "bos_mlp", bos_layer=1))
    assert "blocks.1.hook_mlp_out" in bos
    qk = names(condition_hooks(model, "qk"))
    assert "blocks.0.attn.hook_q" in qk and "blocks.2.attn.hook_k" in qk
    assert names(condition_hooks(model, "combined", bos_layer=1)) == bos | qk
    with pytest.raises(ValueError, match="bos_layer"):
        condition_hooks(model, "bos_mlp")
    with pytest.raises(ValueError, match="Unknown condition"):
        condition_hooks(model, "zero_all")
    with pytest.raises(ValueError, match="out of range"):
        condition_hooks(model, "bos_mlp", bos_layer=3)


def test_phase_experiment_perplexity_per_condition(model):
    from drope_lens.analysis.perplexity import perplexity

    exp = phase_experiment(model, TEXTS, profile_conditions=True, batch_size=3)
    spike = exp.baseline.spike_layer("argmax")
    assert exp.bos_layer == spike and exp.spike_rule == "argmax"
    assert list(exp.conditions) == ["baseline", "bos_mlp", "qk", "combined"]
    ppl = {k: v.ppl["ppl"] for k, v in exp.conditions.items()}
    assert ppl["baseline"] == pytest.approx(perplexity(model, TEXTS).ppl, rel=1e-6)
    direct = perplexity(model, TEXTS, fwd_hooks=bos_mlp_ablation_hooks(spike, model=model)).ppl
    assert ppl["bos_mlp"] == pytest.approx(direct, rel=1e-6)
    assert len(set(round(v, 6) for v in ppl.values())) == 4  # every intervention changes something
    assert exp.conditions["baseline"].profile is exp.baseline
    assert exp.conditions["combined"].profile is not None
    df = exp.to_dataframe()
    assert list(df["condition"]) == list(ppl) and df["ppl_ratio"].iloc[0] == pytest.approx(1.0)
    json.dumps(exp.to_dict())
    # first_above rule, explicit layer, mean mode, study-compatible, profile-only
    exp2 = phase_experiment(model, TEXTS, conditions=("bos_mlp",), bos_layer=0, bos_mode="mean", study_compatible=True)
    assert exp2.bos_layer == 0 and list(exp2.conditions) == ["bos_mlp"]
    only = phase_experiment(model, TEXTS, conditions=())
    assert only.conditions == {} and only.bos_layer is None
    with pytest.raises(ValueError, match="Unknown condition"):
        phase_experiment(model, TEXTS, conditions=("baseline", "sinks"))
    with pytest.raises(ValueError, match="spike rule"):
        phase_experiment(model, TEXTS, spike_rule="max")


def test_shared_pass_equals_separate_passes(model):
    """One pass per condition (profile + PPL) gives exactly what two separate passes give."""
    from drope_lens.analysis.perplexity import perplexity
    from drope_lens.hooks.conditions import condition_hooks

    exp = phase_experiment(model, TEXTS, profile_conditions=True, batch_size=2)
    layer = exp.bos_layer
    for cond in ("qk", "combined"):
        hooks = condition_hooks(model, cond, bos_layer=layer)
        prof = phase_profile(model, TEXTS, fwd_hooks=hooks, batch_size=2)
        got = exp.conditions[cond].profile
        np.testing.assert_allclose(got.sink_scores_per_text, prof.sink_scores_per_text, rtol=1e-6)
        np.testing.assert_allclose(got.entropy_sq_per_text, prof.entropy_sq_per_text, rtol=1e-6)
        ppl = perplexity(model, TEXTS, fwd_hooks=condition_hooks(model, cond, bos_layer=layer), batch_size=2)
        assert exp.conditions[cond].ppl["per_text_nll"] == pytest.approx(ppl.per_text_nll, rel=1e-6)
    # separate PPL texts take the two-pass route and agree on the same texts
    sep = phase_experiment(model, TEXTS, ppl_texts=TEXTS, conditions=("baseline", "qk"), batch_size=2)
    for cond in ("baseline", "qk"):
        assert sep.conditions[cond].ppl["ppl"] == pytest.approx(exp.conditions[cond].ppl["ppl"], rel=1e-6)


def test_qk_profile_uses_real_token_mask(model):
    """Q/K mean replacement inside phase_profile must not see the padding: batching is invariant."""
    hooks = condition_hooks(model, "qk")
    a = phase_profile(model, TEXTS, fwd_hooks=hooks, batch_size=1)
    b = phase_profile(model, TEXTS, fwd_hooks=hooks, batch_size=4)
    assert np.allclose(a.bos_norm_per_text, b.bos_norm_per_text, rtol=1e-4)
    assert np.allclose(a.sink_scores_per_text, b.sink_scores_per_text, atol=1e-5)


def test_cli_phase_json(tmp_path, tokenizer, capsys, monkeypatch):
    from drope_lens import cli

    if "phase" not in cli.SUBCOMMANDS:  # until drope_lens/cli/__init__.py registers it
        monkeypatch.setattr(cli, "SUBCOMMANDS", [*cli.SUBCOMMANDS, "phase"])
    main = cli.main

    src = tmp_path / "tiny"
    tiny_llama(seed=8).save_pretrained(str(src))
    tokenizer.save_pretrained(str(src))
    out = tmp_path / "phase.json"
    args = [
        "phase",
        "--rope",
        str(src),
        "--json",
        str(out),
        "--conditions",
        "baseline,bos_mlp",
        "--include-bos-row",
        "--last-layer",
        "final_norm",
    ]
    for t in TEXTS:
        args += ["--text", t]
    assert main(args) == 0
    d = json.loads(out.read_text())
    assert set(d["models"]) == {"rope", "drope"} and d["n_texts"] == len(TEXTS)
    for role in ("rope", "drope"):
        m = d["models"][role]
        assert set(m["conditions"]) == {"baseline", "bos_mlp"}
        assert m["baseline"]["options"]["include_bos_row"] is True
        assert m["baseline"]["options"]["last_layer"] == "final_norm"
    assert d["models"]["drope"]["baseline"]["position_encoding"] == "nope"
    printed = capsys.readouterr().out
    assert "mean sink rate" in printed and "bos_mlp" in printed
    assert main(["phase", "--rope", str(src), "--text", "the cat", "--tau", "2"]) == 1
