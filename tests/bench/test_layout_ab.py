"""benchmarks/layout_ab.py: the three layouts run side by side in one process; the old per-call kernels on plain
weights are bit-identical to the strided layout, and today's kernels equal them to float rounding."""

from __future__ import annotations

import json

import pytest

from benchmarks import layout_ab

pytestmark = pytest.mark.hooked  # HookedTransformer only


def test_tiny_run_times_every_row_and_variant_with_equal_outputs(tmp_path):
    out = tmp_path / "ab.json"
    argv = ["--model", "tiny", "--repeat", "2", "--seq-len", "24", "--new-tokens", "3", "--prompt-len", "8"]
    assert layout_ab.main(argv + ["--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for row in layout_ab.ROWS:
        diff = res["difference_from_strided"][row]
        assert diff["plain+copy"] == 0.0 and diff["plain"] <= 1e-4, (row, diff)
        for variant in layout_ab.VARIANTS:
            assert len(res["all_s"][row][variant]) == 2 and res["best_s"][row][variant] > 0
    assert "plain / strided" in layout_ab.table(res)


def test_strided_variant_reproduces_the_old_layout(tokenizer):
    from drope_lens.loading import hooked_from_hf
    from drope_lens.testing import tiny_llama

    model = hooked_from_hf(tiny_llama(seed=1), tokenizer)
    variants = layout_ab.build_variants(model)
    strided = variants["strided"]
    w_q = strided.blocks[0].attn.W_Q
    h, m, d = w_q.shape
    assert w_q.stride() == (d * m, 1, m)  # a view of a contiguous [(head d_head), d_model] tensor
    assert strided.unembed.W_U.stride() == (1, strided.cfg.d_model)
    assert all(p.is_contiguous() for p in variants["plain"].parameters())
