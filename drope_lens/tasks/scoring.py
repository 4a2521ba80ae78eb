"""Scoring primitives: answer-option log-probabilities and greedy generation with a KV cache.

Both run under whatever hooks are attached to the model (the runner attaches a condition's hooks
with ``model.hooks(...)`` around the whole call, so they see the prompt pass *and* every later
pass). The prompt is one forward pass; the tokens after it (option tokens beyond the first,
generated tokens) are KV-cache decode steps of one token each, where hooks from
:mod:`drope_lens.hooks` leave things alone (Q/K mean replacement skips decode steps, BOS-MLP
ablation acts on absolute position 0 only). So an intervention touches the prompt only.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
from jaxtyping import Float, Int

from drope_lens.hooks.mask import real_token_mask
from drope_lens.loading.backend import Model
from drope_lens.loading.numerics import check_logits_finite
from drope_lens.loading.surface import KVCache
from drope_lens.loading.tokens import TokenBatch
from drope_lens.options import DEFAULT_BATCH_SIZE


def format_prompt(tokenizer, text: str, *, chat: bool = False) -> str:
    """``text`` as the model sees it: unchanged, or as one user turn of the chat template.

    The chat text loses a leading BOS string, since drope_lens prepends the BOS id itself.
    """
    if not chat:
        return text
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("chat=True needs a tokenizer with a chat template (an instruct model).")
    out = tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True)
    bos = getattr(tokenizer, "bos_token", None)
    if bos and out.startswith(bos):
        out = out[len(bos) :]
    return out


def option_token_ids(tokenizer, options: Sequence[str], *, prefix: str = " ") -> list[list[int]]:
    """Token ids of each answer option (``prefix`` + option, no special tokens)."""
    ids = [list(tokenizer(prefix + opt, add_special_tokens=False)["input_ids"]) for opt in options]
    for opt, row in zip(options, ids, strict=True):
        if not row:
            raise ValueError(f"Option {opt!r} tokenizes to nothing.")
    return ids


def logits_at(
    model: Model, tokens: Int[torch.Tensor, "batch pos"], index: Int[torch.Tensor, " batch"], **kwargs
) -> Float[torch.Tensor, "batch d_vocab"]:
    """Logits at one position per row (``index``), unembedding only those positions.

    Same as ``model(tokens, **kwargs)[arange, index]`` (the unembedding acts per position) but a hook
    on ``unembed.hook_in`` hands the vocabulary projection only those positions, skipping a fifth of
    a small model's compute elsewhere. Works on either backend.
    """
    rows = torch.arange(tokens.shape[0])

    def pick(x: torch.Tensor, hook) -> torch.Tensor:
        return x[rows.to(x.device), index.to(x.device)][:, None]

    with model.hooks(fwd_hooks=[("unembed.hook_in", pick)]):
        logits = model(tokens, **kwargs)[:, 0]
    check_logits_finite(logits)
    return logits


@torch.no_grad()
def prefill(model: Model, tokens: Int[torch.Tensor, " pos"]) -> tuple[Float[torch.Tensor, " d_vocab"], KVCache]:
    """Run one unpadded prompt with a fresh KV cache; return the last position's logits and the cache."""
    cache = KVCache(model, 1)
    n = tokens.shape[0]
    logits = logits_at(model, tokens[None].to(model.cfg.device), torch.tensor([n - 1]), **cache.kwargs(n, 1))
    return logits[0], cache


@torch.no_grad()
def decode_step(model: Model, token: int, cache: KVCache) -> Float[torch.Tensor, " d_vocab"]:
    """Feed one token as a KV-cache decode step; return its logits."""
    logits = model(torch.tensor([[token]], device=model.cfg.device), **cache.kwargs(1, 1))
    check_logits_finite(logits)
    return logits[0, -1]


@torch.no_grad()
def option_logprobs(
    model: Model,
    batch: TokenBatch,
    option_ids: Sequence[Sequence[int]],
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    padded: bool = True,
    on_batch: Optional[Callable[[int], None]] = None,
    row_option_ids: Optional[Sequence[Sequence[Sequence[int]]]] = None,
) -> Float[torch.Tensor, "n_items n_options"]:
    """``log p(option | prompt)`` summed over each option's tokens, for every prompt of ``batch``.

    Single-token options: one forward per prompt, read at the prompt's last real position;
    ``padded=True`` batches right-padded prompts (exact with causal attention, but only valid
    for hooks that treat rows and positions independently), ``padded=False`` runs prompts one by
    one. Each padded batch's real-token mask is declared with
    :func:`~drope_lens.hooks.mask.real_token_mask` for hooks that compute statistics (Q/K mean
    replacement). Multi-token options: the prompts are prefilled with a KV cache (same batches) and
    each option's further tokens are fed as one-token decode steps from a copy of the cache, every
    row decoding as it would alone (see :func:`greedy_generate_batch`).

    ``row_option_ids``: each row's own options (completion items; ``option_ids`` is then ignored).
    Rows whose options are all single-token take the batched path, the others the KV-cache path.
    """
    n = len(batch)
    rows = [list(option_ids)] * n if row_option_ids is None else [list(r) for r in row_option_ids]
    if len(rows) != n:
        raise ValueError(f"row_option_ids has {len(rows)} rows for {n} prompts.")
    k = len(rows[0]) if rows else len(option_ids)
    if any(len(r) != k for r in rows):
        raise ValueError("Every row needs the same number of options.")
    out = torch.empty((n, k), dtype=torch.float64)
    single = [i for i, r in enumerate(rows) if all(len(ids) == 1 for ids in r)]
    if single:
        size = batch_size if padded else 1
        first = torch.tensor([[ids[0] for ids in rows[i]] for i in single])
        sub_all = batch.select(single)
        for pos, sub in sub_all.batches(size):
            sub = sub.to(model.cfg.device)
            with real_token_mask(sub.mask):  # hook statistics over real tokens only
                last = logits_at(model, sub.tokens, sub.lengths - 1)
            logp = torch.log_softmax(last.double(), -1).cpu()
            out[[single[p] for p in pos]] = torch.gather(logp, 1, first[pos])
            if on_batch:
                on_batch(len(pos))
    multi = [i for i in range(n) if i not in set(single)]
    if multi:
        size = batch_size if padded else 1
        device = model.cfg.device
        for pos, sub in batch.select(multi).batches(size):
            rows_b = [rows[multi[p]] for p in pos]
            b, t = sub.tokens.shape
            mask = sub.mask.to(device)
            cache = KVCache(model, b)
            with real_token_mask(mask):  # one prompt pass; pads stay masked in the cache
                last = logits_at(model, sub.tokens.to(device), sub.lengths - 1, **cache.kwargs(t, b, mask))
            logp0 = torch.log_softmax(last.double(), -1).cpu()
            for j in range(k):
                ids_j = [r[j] for r in rows_b]
                total = logp0[torch.arange(b), torch.tensor([ids[0] for ids in ids_j])]
                steps = max(len(ids) for ids in ids_j) - 1
                branch = cache.copy() if steps else None
                for s_ in range(steps):  # one decode step for every row (finished rows idle along)
                    feed = [ids[min(s_, len(ids) - 1)] for ids in ids_j]
                    assert branch is not None
                    logits = model(torch.tensor(feed, device=device)[:, None], **branch.kwargs(1, b))
                    check_logits_finite(logits)
                    step = torch.log_softmax(logits[:, -1].double(), -1).cpu()
                    for r, ids in enumerate(ids_j):
                        if s_ + 1 < len(ids):
                            total[r] += step[r, ids[s_ + 1]]
                out[[multi[p] for p in pos], j] = total
            if on_batch:
                on_batch(len(pos))
    return out


@torch.no_grad()
def greedy_generate_batch(
    model: Model,
    tokens: Int[torch.Tensor, "batch pos"],
    max_new_tokens: int,
    *,
    lengths: Optional[Int[torch.Tensor, " batch"]] = None,
    stop: Optional[Callable[[int, str], bool]] = None,
    stop_at_eos: bool = True,
) -> list[tuple[list[int], str]]:
    """Greedy decoding of a batch of prompts with a KV cache (:class:`~drope_lens.loading.surface.KVCache`).

    ``tokens`` are right-padded when ``lengths`` (real tokens per row) is given. One prompt pass for
    the whole batch (its real-token mask declared to hooks), then one-token decode steps for all rows
    together: the cache keeps the pads in its attention mask, so they are never attended,
    and rotary positions count real tokens only, so every row decodes exactly as it would alone. A
    row stops after ``max_new_tokens``, at EOS (``stop_at_eos``) or when ``stop(row, decoded_text)``
    is true; the others go on. Returns ``(generated ids without EOS, decoded text)`` per row.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if tokens.ndim != 2:
        raise ValueError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}")
    tok = model.tokenizer
    assert tok is not None, "greedy generation needs the model's tokenizer"
    eos = getattr(tok, "eos_token_id", None) if stop_at_eos else None
    device = model.cfg.device
    b, t = tokens.shape
    lengths = torch.full((b,), t) if lengths is None else lengths.cpu()
    if bool((lengths < 1).any()) or bool((lengths > t).any()):
        raise ValueError(f"lengths must be in 1..{t}, got {lengths.tolist()}")
    mask = (torch.arange(t)[None] < lengths[:, None]).to(device)
    cache = KVCache(model, b)
    with real_token_mask(mask):
        logits = logits_at(model, tokens.to(device), lengths - 1, **cache.kwargs(t, b, mask))
    outs: list[list[int]] = [[] for _ in range(b)]
    texts = [""] * b
    done = [False] * b
    for step in range(max_new_tokens):
        nxt = logits.argmax(-1).tolist()
        for row in range(b):
            if done[row]:
                continue
            if eos is not None and nxt[row] == eos:
                done[row] = True
                continue
            outs[row].append(nxt[row])
            texts[row] = tok.decode(outs[row], skip_special_tokens=True)
            if stop is not None and stop(row, texts[row]):
                done[row] = True
        if all(done) or step == max_new_tokens - 1:
            break
        logits = model(torch.tensor(nxt, device=device)[:, None], **cache.kwargs(1, b))[:, -1]
        check_logits_finite(logits)
    return list(zip(outs, texts, strict=True))


def greedy_generate(
    model: Model,
    tokens: Int[torch.Tensor, " pos"],
    max_new_tokens: int,
    *,
    stop: Optional[Callable[[str], bool]] = None,
    stop_at_eos: bool = True,
) -> tuple[list[int], str]:
    """Greedy decoding of one prompt (see :func:`greedy_generate_batch`)."""
    row_stop = None if stop is None else (lambda row, text: stop(text))
    return greedy_generate_batch(model, tokens[None], max_new_tokens, stop=row_stop, stop_at_eos=stop_at_eos)[0]
