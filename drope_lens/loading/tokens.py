"""Tokenization with an explicit BOS policy, right padding and length checks.

drope_lens tokenizes every text without the tokenizer's own special tokens and then prepends the
tokenizer's BOS id itself (``prepend_bos=True``, the default). So position 0 is always BOS, whatever
the tokenizer's habits (Llama-2 adds ``<s>``, SmolLM2's tokenizer adds nothing), and both models of
a pair get identical ids. Batches are right-padded: with causal attention the real tokens never see
the pads and keep their positions, so every statistic restricted to real tokens (``mask``) equals the
unpadded computation exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import torch
from jaxtyping import Bool, Int

from drope_lens.errors import DropeLensInputError, InputTooLongError
from drope_lens.validation import check_batch_size


@dataclass
class TokenBatch:
    """Right-padded token ids with their true lengths."""

    tokens: Int[torch.Tensor, "batch pos"]
    lengths: Int[torch.Tensor, " batch"]

    @property
    def mask(self) -> Bool[torch.Tensor, "batch pos"]:
        """True on real tokens, False on padding."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return pos[None, :] < self.lengths.to(self.tokens.device)[:, None]

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def select(self, idx: Sequence[int]) -> "TokenBatch":
        idx_t = torch.as_tensor(list(idx), dtype=torch.long)
        lengths = self.lengths[idx_t]
        width = int(lengths.max()) if len(idx_t) else 0
        return TokenBatch(self.tokens[idx_t, :width], lengths)

    def batches(self, batch_size: int, *, sort: bool = True) -> Iterator[tuple[list[int], "TokenBatch"]]:
        """Yield ``(indices, sub_batch)``; with ``sort`` similar lengths share a batch (less padding)."""
        check_batch_size(batch_size)
        order = list(range(len(self)))
        if sort:
            order.sort(key=lambda i: -int(self.lengths[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.select(idx)

    def to(self, device) -> "TokenBatch":
        return TokenBatch(self.tokens.to(device), self.lengths.to(device))


def bos_id(tokenizer) -> int:
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise DropeLensInputError("The tokenizer has no BOS token. Pass prepend_bos=False, or set tokenizer.bos_token.")
    return int(bos)


def pad_id(tokenizer) -> int:
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def encode(
    tokenizer,
    texts: Union[str, Sequence[str]],
    *,
    prepend_bos: bool = True,
    max_length: Optional[int] = None,
    n_ctx: Optional[int] = None,
) -> TokenBatch:
    """Tokenize ``texts`` into a right-padded :class:`TokenBatch`.

    Args:
        prepend_bos: put the tokenizer's BOS id at position 0 of every text.
        max_length: truncate each text to this many tokens (BOS included). Without it, a text
            longer than ``n_ctx`` raises :class:`InputTooLongError`.
        n_ctx: the model's context window.
    """
    if isinstance(texts, str):
        texts = [texts]
    if len(texts) == 0:
        raise DropeLensInputError("No texts given.")
    if max_length is not None and max_length < 1 + int(prepend_bos):
        raise DropeLensInputError(f"max_length={max_length} leaves no room for text tokens.")
    ids: list[list[int]] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"Text {i} is a {type(text).__name__}, expected str.")
        row = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if not row:
            raise DropeLensInputError(f"Text {i} is empty (it has no tokens); give non-empty texts.")
        if prepend_bos:
            row = [bos_id(tokenizer)] + row
        if max_length is not None:
            row = row[:max_length]
        if n_ctx is not None and len(row) > n_ctx:
            raise InputTooLongError(
                f"Text {i} is {len(row)} tokens long, more than the model's n_ctx={n_ctx}. "
                f"Shorten it, or pass max_length={n_ctx} (CLI: --max-length) to truncate."
            )
        ids.append(row)
    width = max(len(r) for r in ids)
    tokens = torch.full((len(ids), width), pad_id(tokenizer), dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return TokenBatch(tokens, torch.tensor([len(r) for r in ids], dtype=torch.long))


def _refuse_padded(model, tokens: torch.Tensor) -> None:
    """A bare id tensor carries no lengths: refuse one whose rows end in a (distinct) pad id."""
    tok = getattr(model, "tokenizer", None)
    pad = getattr(tok, "pad_token_id", None)
    special = {getattr(tok, "bos_token_id", None), getattr(tok, "eos_token_id", None)}
    if tokens.shape[0] > 1 and pad is not None and pad not in special and bool((tokens[:, -1] == pad).any()):
        raise DropeLensInputError(
            f"The token tensor looks right-padded (a row ends in the pad id {pad}), but a tensor "
            "carries no lengths, so padding would count as real tokens. Pass a TokenBatch "
            "(tokens + lengths, e.g. from encode) or the texts themselves."
        )


def as_batch(model, inputs, **kwargs) -> TokenBatch:
    """Accept texts, a :class:`TokenBatch`, or an unpadded ``[batch, pos]`` id tensor.

    ``max_length`` truncates every input type alike (each row to its first ``max_length``
    positions, BOS included), so analyses given the same inputs see the same tokens."""
    max_length = kwargs.get("max_length")
    if max_length is not None and not isinstance(inputs, (str, list, tuple)) and max_length < 1:
        raise DropeLensInputError(f"max_length must be >= 1, got {max_length}.")
    if isinstance(inputs, TokenBatch):
        if max_length is not None and inputs.tokens.shape[1] > max_length:
            return TokenBatch(inputs.tokens[:, :max_length], inputs.lengths.clamp(max=max_length))
        return inputs
    if isinstance(inputs, torch.Tensor):
        tokens = inputs if inputs.ndim == 2 else inputs[None]
        if max_length is not None:
            tokens = tokens[:, :max_length]
        _refuse_padded(model, tokens)
        n_ctx = getattr(model.cfg, "n_ctx", None)
        if n_ctx is not None and tokens.shape[1] > n_ctx:
            raise InputTooLongError(f"Token tensor has {tokens.shape[1]} positions, more than n_ctx={n_ctx}.")
        return TokenBatch(tokens.long(), torch.full((tokens.shape[0],), tokens.shape[1]))
    if model.tokenizer is None:
        raise DropeLensInputError("This model has no tokenizer; pass token ids instead of texts.")
    kwargs.setdefault("n_ctx", model.cfg.n_ctx)
    return encode(model.tokenizer, inputs, **kwargs)
