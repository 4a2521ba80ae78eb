"""frames.cell_frame: the per-cell tables of BosWrite, HeadClasses and KeyImportance."""

import numpy as np
import pytest
import torch

from drope_lens.analysis.bos_write import bos_write
from drope_lens.analysis.head_classes import CLASSES, head_classes
from drope_lens.analysis.peers import key_importance
from drope_lens.frames import cell_frame
from drope_lens.testing import tiny_hooked


def test_cell_frame_rows_and_text_means():
    rng = np.random.default_rng(0)
    per_text, plain = rng.normal(size=(11, 2, 3)), rng.normal(size=(2, 3))
    df = cell_frame("m", ("layer", "head"), {"a": per_text, "b": plain})
    assert list(df.columns) == ["model", "layer", "head", "a", "b"]
    assert list(zip(df["layer"], df["head"], strict=True)) == [(i, j) for i in range(2) for j in range(3)]
    for row in df.itertuples():
        assert row.model == "m"
        assert np.isclose(row.a, sum(per_text[:, row.layer, row.head]) / 11, rtol=1e-14, atol=0)
        assert row.b == plain[row.layer, row.head]


@pytest.fixture(scope="module")
def model_and_ids():
    model = tiny_hooked(0)
    ids = torch.randint(3, model.cfg.d_vocab, (10, 16), generator=torch.Generator().manual_seed(1))
    ids[:, 0] = model.tokenizer.bos_token_id
    return model, ids


def test_result_frames_equal_a_loop_over_cells(model_and_ids):
    model, ids = model_and_ids
    w, hc, ki = bos_write(model, ids), head_classes(model, ids), key_importance(model, ids, max_positions=8)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for (li, h), row in zip([(li, h) for li in range(L) for h in range(H)], w.to_dataframe().itertuples(), strict=True):
        assert (row.layer, row.head) == (li, h)
        assert (row.v_norm, row.attn, row.write) == tuple(
            w.__dict__[k][:, li, h].mean() for k in ("v_norm", "attn", "write")
        )
    df = hc.to_dataframe()
    assert list(df["class"]) == [CLASSES[c] for c in hc.classes.ravel()]
    assert list(df["bos"]) == [hc.bos[:, li, h].mean() for li in range(L) for h in range(H)]
    df = ki.to_dataframe()
    imp = np.nanmean(ki.importance, 1)
    assert list(df["position"]) == list(range(8)) * L
    np.testing.assert_array_equal(df["importance"].to_numpy(), imp.ravel())
    np.testing.assert_array_equal(df["k_norm"].to_numpy(), ki.k_norm.ravel())
