"""The study's way of doing each experiment, written plainly as the benchmark's baseline.

What the study's scripts did (see ``shared/spec/STUDY_SPEC.md`` §0, §2-§4, §6, §7), re-written here
from that description (no code of the study is copied):

* a plain Hugging Face ``LlamaForCausalLM``, batch 1, one text at a time, no padding;
* ``register_forward_hook`` on ``self_attn.q_proj / k_proj / v_proj`` that **store the full outputs**
  (``[1, T, heads*d_head]``); norms and counts are computed afterwards from the stored tensors;
* one model pass per experiment: the disruption script recomputes the baseline and the massive-zeroed
  perplexity inside every seed's trial; the phase script takes hidden states and attentions in one
  eager pass and the (final) sink rates in another pass with Q/K hooks;
* task scoring by ``generate(max_new_tokens=20, do_sample=False)`` and string parsing.

Every function takes HF token-id rows (1-D ``LongTensor`` each, BOS at position 0): the benchmark
feeds the study's way the very ids drope_lens sees.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import torch

Rows = Sequence[torch.Tensor]


def _layers(hf):
    return hf.model.layers


def _n_heads(hf, tensor: str) -> tuple[int, int]:
    cfg = hf.config
    d_head = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    heads = cfg.num_attention_heads if tensor == "q" else (cfg.num_key_value_heads or cfg.num_attention_heads)
    return heads, d_head


def capture_projections(
    hf, ids: torch.Tensor, tensors: Sequence[str] = ("q", "k", "v"), **forward_kwargs
) -> tuple[dict, object]:
    """Run one text and keep every layer's full q/k/v projection output (the study's hooks)."""
    store: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    for layer, block in enumerate(_layers(hf)):
        for t in tensors:
            proj = getattr(block.self_attn, f"{t}_proj")

            def hook(module, inputs, output, key=(t, layer)):
                store[key] = output.detach().clone()

            handles.append(proj.register_forward_hook(hook))
    try:
        out = hf(input_ids=ids.view(1, -1).to(hf.device), **forward_kwargs)
    finally:
        for h in handles:
            h.remove()
    return store, out


# ----------------------------------------------------------------------------------- Exp 1
@torch.no_grad()
def detection(hf, rows: Rows, *, threshold: float = 5.0, tensors: Sequence[str] = ("q", "k", "v")) -> dict:
    """Massive-value counts per text: M = ||X[:, h, d]||_2 / sqrt(T); massive if M > lambda * mean(M)."""
    per_text = {t: [] for t in tensors}
    for ids in rows:
        store, _ = capture_projections(hf, ids, tensors)
        T = ids.numel()
        for t in tensors:
            heads, d_head = _n_heads(hf, t)
            total = 0
            for layer in range(len(_layers(hf))):
                x = store[(t, layer)].float().view(1, T, heads, d_head)
                m = x.norm(dim=1).mean(0) / math.sqrt(T)
                total += int((m > threshold * m.mean()).sum())
            per_text[t].append(total)
        del store
    return per_text


# ----------------------------------------------------------------------------------- Exp 2
def _ppl_one(hf, ids: torch.Tensor) -> tuple[float, int]:
    ids = ids.view(1, -1).to(hf.device)
    out = hf(input_ids=ids, labels=ids)
    n = ids.shape[1] - 1
    return float(out.loss) * n, n


@torch.no_grad()
def perplexity(hf, rows: Rows) -> float:
    """PPL-A: exp(sum_texts loss*(T-1) / sum_texts (T-1)), one text per forward."""
    nll = count = 0.0
    for ids in rows:
        a, b = _ppl_one(hf, ids)
        nll += a
        count += b
    return math.exp(nll / count)


@torch.no_grad()
def identify_dims(hf, rows: Rows, *, threshold: float = 5.0) -> dict[int, dict[str, torch.Tensor]]:
    """Per layer: flattened q/k masks of ``avg_texts(||X||_2 over tokens) > lambda * mean``."""
    sums: dict[tuple[str, int], torch.Tensor] = {}
    for ids in rows:
        store, _ = capture_projections(hf, ids, ("q", "k"))
        T = ids.numel()
        for (t, layer), x in store.items():
            heads, d_head = _n_heads(hf, t)
            norm = x.float().view(T, heads, d_head).norm(dim=0)
            sums[(t, layer)] = sums.get((t, layer), 0) + norm
        del store
    masks: dict[int, dict[str, torch.Tensor]] = {}
    for layer in range(len(_layers(hf))):
        q = sums[("q", layer)] / len(rows)
        k = sums[("k", layer)] / len(rows)
        qm, km = q > threshold * q.mean(), k > threshold * k.mean()
        if bool(qm.any() or km.any()):
            masks[layer] = {"q": qm.flatten(), "k": km.flatten()}
    return masks


def _zero_hooks(hf, masks: dict[int, dict[str, torch.Tensor]]) -> list:
    handles = []
    for layer, per in masks.items():
        for t, mask in per.items():
            keep = (~mask).to(hf.dtype).to(hf.device)

            def hook(module, inputs, output, keep=keep):
                return output * keep

            handles.append(getattr(_layers(hf)[layer].self_attn, f"{t}_proj").register_forward_hook(hook))
    return handles


def _with_hooks(hf, masks, fn: Callable[[], float]) -> float:
    handles = _zero_hooks(hf, masks)
    try:
        return fn()
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def disruption(hf, identify_rows: Rows, eval_rows: Rows, seeds: Sequence[int], *, threshold: float = 5.0) -> dict:
    """Zero massive q/k dims vs random dims, one trial per seed (baseline and massive recomputed each time)."""
    masks = identify_dims(hf, identify_rows, threshold=threshold)
    trials = []
    for seed in seeds:
        base = perplexity(hf, eval_rows)
        massive = _with_hooks(hf, masks, lambda: perplexity(hf, eval_rows))
        torch.manual_seed(seed)
        rand = {}
        for layer in sorted(masks):
            rand[layer] = {}
            for t in ("q", "k"):
                n = int(masks[layer][t].sum())
                sel = torch.zeros_like(masks[layer][t])
                sel[torch.randperm(sel.numel())[:n]] = True
                rand[layer][t] = sel
        random_ppl = _with_hooks(hf, rand, lambda: perplexity(hf, eval_rows))
        trials.append({"seed": seed, "base": base, "massive": massive, "random": random_ppl})
    return {"n_dims": int(sum(int(m.sum()) for per in masks.values() for m in per.values())), "trials": trials}


# ----------------------------------------------------------------------------------- Exp 4
def _entropy_eig(x: torch.Tensor) -> tuple[float, float]:
    c = x @ x.T
    lam = torch.linalg.eigvalsh(c).flip(0).clamp(min=0)
    tr = float(torch.trace(c))
    if tr < 1e-10:
        return 0.0, 1.0
    p = (lam / tr).clamp(min=1e-10)
    return float(-(p * p.log()).sum()), float(p[0])


@torch.no_grad()
def manual_sink_rates(hf, rows: Rows, *, tau: float = 0.3) -> list[list[float]]:
    """Sink rate per text and layer from pre-RoPE q/k (the final sink numbers' "manual Q/K" script)."""
    out = []
    for ids in rows:
        store, _ = capture_projections(hf, ids, ("q", "k"))
        T = ids.numel()
        rates = []
        for layer in range(len(_layers(hf))):
            hq, d = _n_heads(hf, "q")
            hk, _ = _n_heads(hf, "k")
            q = store[("q", layer)].float().view(T, hq, d).transpose(0, 1)
            k = store[("k", layer)].float().view(T, hk, d).transpose(0, 1)
            k = k.repeat_interleave(hq // hk, dim=0)
            scores = q @ k.transpose(1, 2) / math.sqrt(d)
            scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool, device=scores.device).triu(1), float("-inf"))
            attn = scores.softmax(-1)
            sink = attn[:, :, 0].mean(-1)
            rates.append(float((sink >= tau).float().mean()))
        out.append(rates)
        del store
    return out


@torch.no_grad()
def phase(hf_eager, rows: Rows, *, tau: float = 0.3) -> dict:
    """BOS norm/ratio and entropy from ``output_hidden_states``, sink rate from ``output_attentions``
    (one eager pass per text), then the final sink rates in a second pass with q/k hooks."""
    per_text = []
    for ids in rows:
        out = hf_eager(input_ids=ids.view(1, -1).to(hf_eager.device), output_hidden_states=True, output_attentions=True)
        layers = []
        for h, a in zip(out.hidden_states[1:], out.attentions, strict=True):
            x = h[0].float()
            norms = x.norm(dim=-1)
            bos_norm = float(norms[0])
            ratio_ = bos_norm / (float(norms[1:].mean()) + 1e-8) if x.shape[0] > 1 else 1.0
            ent, aniso = _entropy_eig(x)
            sink = a[0].float()[:, :, 0].mean(-1)
            layers.append(
                {
                    "bos_norm": bos_norm,
                    "bos_ratio": ratio_,
                    "entropy": ent,
                    "anisotropy": aniso,
                    "sink_rate_eager": float((sink >= tau).float().mean()),
                }
            )
        per_text.append(layers)
        del out
    return {"per_text": per_text, "sink_rates": manual_sink_rates(hf_eager, rows, tau=tau)}


@torch.no_grad()
def sinks(hf, rows: Rows, *, tau: float = 0.3) -> list[list[float]]:
    """Sink rates alone, the study's final way (manual pre-RoPE Q/K, one text at a time)."""
    return manual_sink_rates(hf, rows, tau=tau)


# ----------------------------------------------------------------------------------- Exp 3
def parse_yes_no(text: str) -> int:
    """1 yes / 0 no / -1 unparseable: first word, else keyword counts in the first 100 characters."""
    t = text.lower().strip()
    words = t.split()
    if words:
        if words[0].startswith("yes"):
            return 1
        if words[0].startswith("no"):
            return 0
    head = t[:100]
    pos = sum(head.count(w) for w in ("yes", "true", "correct", "right"))
    neg = sum(head.count(w) for w in ("no", "false", "incorrect", "wrong"))
    if pos == neg:
        return -1
    return 1 if pos > neg else 0


def parse_sentiment(text: str) -> int:
    t = text.lower()
    p, n = t.find("positive"), t.find("negative")
    if p == -1 and n == -1:
        return -1
    if n == -1 or (p != -1 and p < n):
        return 1
    return 0


@torch.no_grad()
def generate_answer(
    hf, prompt_ids: torch.Tensor, *, max_new_tokens: int = 20, pad_id: Optional[int] = None
) -> torch.Tensor:
    ids = prompt_ids.view(1, -1).to(hf.device)
    out = hf.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=pad_id,
        min_new_tokens=max_new_tokens,
    )
    return out[0, ids.shape[1] :]


@torch.no_grad()
def score_task(
    hf, tokenizer, items: Sequence[tuple[torch.Tensor, str]], kind: str, *, max_new_tokens: int = 20
) -> float:
    """Accuracy over ``(prompt ids, answer)`` items by generation + parsing (the study's Exp 3).

    ``kind``: ``"yes_no"`` (answer "Yes"/"No"; unparseable answers leave the denominator, like the
    study), ``"sentiment"`` (answer "Positive"/"Negative"; unparseable = wrong) or ``"passkey"``
    (correct iff the digits occur in the continuation).
    """
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    correct = parsed = 0
    for ids, answer in items:
        new = generate_answer(hf, ids, max_new_tokens=max_new_tokens, pad_id=pad)
        text = tokenizer.decode(new, skip_special_tokens=True)
        if kind == "passkey":
            parsed += 1
            correct += int(answer in text)
        elif kind == "sentiment":
            parsed += 1
            correct += int(parse_sentiment(text) == (1 if answer.lower().startswith("pos") else 0))
        else:
            got = parse_yes_no(text)
            if got != -1:
                parsed += 1
                correct += int(got == (1 if answer.lower().startswith("yes") else 0))
    return correct / parsed if parsed else 0.0
