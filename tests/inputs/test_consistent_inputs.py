"""Same inputs, same tokens, whatever their type (one max_length semantics)."""

import pytest
import torch

from drope_lens.loading import hooked_from_hf
from drope_lens.loading.forward import to_batch
from drope_lens.loading.tokens import as_batch
from drope_lens.testing import tiny_llama

TEXTS = ["the quick brown fox jumps over the lazy dog again and again", "a b c d e f g h"]


@pytest.fixture(scope="module")
def model(tokenizer):
    return hooked_from_hf(tiny_llama(seed=5), tokenizer)


@pytest.mark.parametrize("max_length", [3, 6, None])
def test_max_length_same_for_every_input_type(model, max_length):
    full = as_batch(model, TEXTS)
    ref = as_batch(model, TEXTS, max_length=max_length)
    if max_length is not None:
        assert ref.tokens.shape[1] == max_length
    dense = full.tokens[:1, : int(full.lengths[0])]  # an unpadded id tensor
    for fn in (as_batch, lambda m, x, **k: to_batch(m, x, **k)):
        b = fn(model, full, max_length=max_length)
        assert torch.equal(b.tokens, ref.tokens) and torch.equal(b.lengths, ref.lengths)
        t = fn(model, dense, max_length=max_length)
        assert torch.equal(t.tokens, ref.tokens[:1, : t.tokens.shape[1]])
        assert t.tokens.shape[1] == (max_length or dense.shape[1])


# ------------------------------------------------------------------ mean replacement and padding
def _mean_hooks(model, kind):
    from drope_lens.hooks.bos import bos_mlp_ablation_hooks
    from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks

    return qk_mean_replacement_hooks(model, k=2) if kind == "qk" else bos_mlp_ablation_hooks(1, mode="mean")


def _one_row_at_a_time(model, batch, hooks):
    """The explicit reference: each text alone, unpadded (one row: every position is real)."""
    out = []
    for i in range(len(batch)):
        n = int(batch.lengths[i])
        out.append(model.run_with_hooks(batch.tokens[i : i + 1, :n], fwd_hooks=hooks)[0])
    return out


@pytest.mark.parametrize("kind", ["qk", "bos_mean"])
def test_mean_replacement_uses_the_batch_mask(model, kind):
    """A padded batch through drope_lens (forward_batch declares its mask) equals each text alone;
    counting the pads as real (the old silent behaviour) does not."""
    from drope_lens.hooks.mask import real_token_mask
    from drope_lens.loading.forward import forward_batch

    batch = as_batch(model, TEXTS)
    assert not bool(batch.mask.all())  # really padded
    hooks = _mean_hooks(model, kind)
    ref = _one_row_at_a_time(model, batch, hooks)
    with model.hooks(fwd_hooks=hooks):
        got = forward_batch(model, batch)
    with real_token_mask(torch.ones_like(batch.mask)), model.hooks(fwd_hooks=hooks):
        pads_as_real = model(batch.tokens)
    for i, r in enumerate(ref):
        n = r.shape[0]
        torch.testing.assert_close(got[i, :n], r, rtol=1e-4, atol=1e-4)
    short = int(batch.lengths.argmin())
    n = ref[short].shape[0]
    assert not torch.allclose(pads_as_real[short, :n], ref[short], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["qk", "bos_mean"])
def test_mean_replacement_refuses_a_batch_without_a_mask(model, kind):
    from drope_lens.errors import DropeLensInputError
    from drope_lens.hooks.mask import real_token_mask

    batch = as_batch(model, TEXTS)
    hooks = _mean_hooks(model, kind)
    with pytest.raises(DropeLensInputError, match="no real-token mask declared"):
        model.run_with_hooks(batch.tokens, fwd_hooks=hooks)  # a padded tensor, nothing says where the pads are
    ref = _one_row_at_a_time(model, batch, hooks)
    with real_token_mask(batch.mask), model.hooks(fwd_hooks=hooks):  # declared by hand: exact again
        got = model(batch.tokens)
    torch.testing.assert_close(got[1, : ref[1].shape[0]], ref[1], rtol=1e-4, atol=1e-4)


def test_padded_id_tensor_is_refused_by_analyses(model):
    from drope_lens.analysis.perplexity import perplexity
    from drope_lens.errors import DropeLensInputError

    batch = as_batch(model, TEXTS)
    with pytest.raises(DropeLensInputError, match="looks right-padded .* pad id 3"):
        perplexity(model, batch.tokens)
    assert perplexity(model, batch).n_targets == int(batch.lengths.sum()) - len(batch)  # the batch is fine
