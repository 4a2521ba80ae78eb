"""The long-context benchmark cases: the plain-HF Jin-style peer computes what drope_lens computes."""

from __future__ import annotations

import pytest

from benchmarks import long_cases
from drope_lens.analysis.perplexity import perplexity
from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks
from drope_lens.loading import encode, hooked_from_hf
from drope_lens.testing import TINY_TEXTS, tiny_llama


def test_jin_peer_equals_drope_lens_mean_replacement(tokenizer):
    hf = tiny_llama(seed=2).eval()
    tl = hooked_from_hf(tiny_llama(seed=2), tokenizer)
    batch = encode(tokenizer, list(TINY_TEXTS))
    rows = [batch.tokens[i, : int(n)] for i, n in enumerate(batch.lengths)]
    ours = perplexity(tl, batch, fwd_hooks=qk_mean_replacement_hooks(tl)).ppl
    plain = perplexity(tl, batch).ppl
    peer = long_cases.jin_style_hf(hf, rows)
    assert peer == pytest.approx(ours, rel=1e-4)
    assert abs(peer - plain) > 1e-3 * plain  # the replacement does change the model


def test_long_cases_are_registered_and_render():
    from benchmarks.cases import CASE_BUILDERS

    assert set(long_cases.LONG_CASES) <= set(CASE_BUILDERS)
    rec = {
        "case": "long_phase",
        "status": "ok",
        "workload": "1 × 4096 tok",
        "sections": {
            "drope_lens": {"time_s": 2.0, "peak_delta_mb": 100.0},
            "hf_forward_nologits": {"time_s": 1.0, "peak_delta_mb": 80.0},
        },
    }
    table = long_cases.render_long_table([rec, {"case": "detection"}])
    assert "| long_phase | 1 × 4096 tok | drope_lens | 2 | 100 | 2.00× |" in table
    assert "detection" not in table.split("\n", 2)[2]


def test_long_phase_times_the_pattern_reference_only_up_to_its_limit():
    import argparse

    args = argparse.Namespace(long_lengths="4096,8192", long_pattern_max=4096, seq_len=256, context_lengths="512")
    short, long = long_cases.plans(args)["long_phase"]
    assert short["seq_len"] == 4096 and "only_sections" not in short  # every section, pattern path included
    assert long["seq_len"] == 8192 and "drope_lens_pattern" not in long["only_sections"].split(",")
    assert "drope_lens" in long["only_sections"].split(",")
