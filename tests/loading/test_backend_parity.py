"""The parity table on the embedded pair: every analysis gives the same numbers on HookedTransformer and on
TransformerBridge (the table itself: ``python -m benchmarks.backend_parity``)."""

import pytest

from benchmarks.backend_parity import TOLERANCE, default_texts, load_pairs, markdown, parity_rows
from drope_lens.loading.backend import hooked_available

pytestmark = [
    pytest.mark.slow,
    pytest.mark.both_backends,
    pytest.mark.skipif(not hooked_available(), reason="comparing with HookedTransformer needs TransformerLens < 4"),
]


def test_embedded_pair_same_numbers_on_both_backends():
    hooked, bridge = load_pairs()
    rows = parity_rows(hooked, bridge, default_texts(6), max_length=96)
    assert {(r.analysis, r.role) for r in rows} == {(a, role) for a in TOLERANCE for role in ("rope", "drope")}
    bad = [r for r in rows if not r.ok]
    assert not bad, markdown(rows)
