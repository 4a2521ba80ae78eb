"""Pack documents into fixed-length token blocks and split off a seeded held-out set.

DroPE packs documents into fixed-length blocks with EOS between them. drope_lens additionally starts
every block with BOS (``bos=True``, the default) because every drope_lens analysis puts BOS at
position 0: the recalibrated model then sees at training time the layout it is analysed on. The
held-out blocks are chosen by a seeded permutation *before* training and are never trained on (training blocks
repeating a held-out one are dropped);
blocks never overlap (each stream token lands in exactly one block), and
:func:`check_disjoint` verifies it on the token rows themselves.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import torch
from jaxtyping import Int

from drope_lens.errors import DropeLensInputError
from drope_lens.recalibrate.corpus import Document


@dataclass
class BlockSplit:
    """Packed blocks split into train and held-out; ``*_ids`` index the packed blocks."""

    train: Int[torch.Tensor, "n_train seq"]
    heldout: Int[torch.Tensor, "n_heldout seq"]
    train_ids: list[int]
    heldout_ids: list[int]
    seq_len: int
    seed: int
    n_stream_tokens: int

    def fingerprint(self) -> str:
        """Hash of both splits' tokens (what identifies the data of a run)."""
        h = hashlib.sha256()
        for t in (self.train, self.heldout):
            h.update(t.to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()[:16]

    def to_dict(self) -> dict:
        return {
            "seq_len": self.seq_len,
            "seed": self.seed,
            "n_train": len(self.train_ids),
            "n_heldout": len(self.heldout_ids),
            "n_stream_tokens": self.n_stream_tokens,
            "heldout_ids": self.heldout_ids,
            "fingerprint": self.fingerprint(),
        }


def token_stream(tokenizer, docs: Sequence[Document]) -> list[int]:
    """All documents tokenized without special tokens, joined with EOS between them."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise DropeLensInputError("The tokenizer has no EOS token; packing needs one between documents.")
    stream: list[int] = []
    for i, doc in enumerate(docs):
        if i:
            stream.append(eos)
        stream += list(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
    return stream


def pack_blocks(stream: Sequence[int], seq_len: int, *, bos_id: int | None) -> Int[torch.Tensor, "n seq"]:
    """Cut the stream into consecutive, non-overlapping blocks of ``seq_len`` tokens (BOS first if
    ``bos_id`` is given, then ``seq_len - 1`` stream tokens); the incomplete tail is dropped."""
    if seq_len < 2:
        raise DropeLensInputError(f"--seq-len must be >= 2, got {seq_len}")
    body = seq_len - (bos_id is not None)
    n = len(stream) // body
    if n == 0:
        raise DropeLensInputError(f"The data has {len(stream)} tokens, fewer than one block of {seq_len}.")
    blocks = torch.tensor(list(stream[: n * body]), dtype=torch.int64).view(n, body)
    if bos_id is not None:
        blocks = torch.cat([torch.full((n, 1), int(bos_id), dtype=torch.int64), blocks], dim=1)
    return blocks


def split_blocks(
    blocks: Int[torch.Tensor, "n seq"], *, n_heldout: int, seed: int, n_stream_tokens: int = 0
) -> BlockSplit:
    """Seeded held-out split: a ``torch.Generator(seed)`` permutation; its first ``n_heldout`` are held
    out. A training block whose tokens equal a held-out block's (repeated text) is dropped from
    training, so no held-out row is ever trained on."""
    n = len(blocks)
    if not 0 < n_heldout < n:
        raise DropeLensInputError(
            f"held-out blocks must be between 1 and {n - 1} (the data packs into {n} blocks), got {n_heldout}"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held, train = sorted(perm[:n_heldout]), sorted(perm[n_heldout:])
    held_rows = {blocks[i].numpy().tobytes() for i in held}
    train = [i for i in train if blocks[i].numpy().tobytes() not in held_rows]
    if not train:
        raise DropeLensInputError("every training block repeats a held-out block; give more varied data")
    return BlockSplit(blocks[train], blocks[held], train, held, blocks.shape[1], seed, n_stream_tokens)


def make_split(
    tokenizer, docs: Sequence[Document], *, seq_len: int, n_heldout: int, seed: int, bos: bool = True
) -> BlockSplit:
    stream = token_stream(tokenizer, docs)
    bos_id = tokenizer.bos_token_id if bos else None
    if bos and bos_id is None:
        raise DropeLensInputError("The tokenizer has no BOS token; use bos=False.")
    return split_blocks(
        pack_blocks(stream, seq_len, bos_id=bos_id), n_heldout=n_heldout, seed=seed, n_stream_tokens=len(stream)
    )


def check_disjoint(split: BlockSplit) -> None:
    """Raise if any held-out block id is a training id, or any held-out row equals a training row."""
    if set(split.train_ids) & set(split.heldout_ids):
        raise AssertionError("held-out block ids overlap the training ids")
    rows = {r.numpy().tobytes() for r in split.train}
    same = [i for i, r in zip(split.heldout_ids, split.heldout, strict=True) if r.numpy().tobytes() in rows]
    if same:
        raise AssertionError(f"held-out blocks {same[:5]} also appear among the training blocks")
