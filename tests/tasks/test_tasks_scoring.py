"""Scoring primitives: option log-probs vs a direct computation, greedy decoding, parsing, stats."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from drope_lens.loading import encode, hooked_from_hf
from drope_lens.tasks import check_yes_no, degradation, option_logprobs, parse_sentiment, wilson_interval
from drope_lens.tasks.parsing import first_number, passkey_done, passkey_exact, passkey_substring
from drope_lens.tasks.scoring import format_prompt, greedy_generate, option_token_ids

PROMPTS = [
    "the cat is in the house . answer :",
    "is paris in france ? answer :",
    "the sky is blue and the sun is hot . is it cold ? answer : no . is it hot ? answer :",
    "a",
]


@pytest.fixture(scope="module")
def tiny(tokenizer):
    from drope_lens.testing import tiny_llama

    return hooked_from_hf(tiny_llama(seed=3), tokenizer)


@torch.no_grad()
def direct_logprob(model, prompt_ids: list[int], option_ids: list[int]) -> float:
    """log p(option | prompt) from one cache-free, unpadded forward of prompt + option."""
    ids = torch.tensor([prompt_ids + option_ids])
    logp = torch.log_softmax(model(ids)[0].double(), -1)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + j, t] for j, t in enumerate(option_ids)))


@pytest.mark.parametrize("options", [(" yes", " no"), (" red sky", " blue", " two three four")])
@pytest.mark.parametrize("padded", [True, False])
def test_option_logprobs_equal_direct_computation(tiny, tokenizer, options, padded):
    batch = encode(tokenizer, PROMPTS)
    ids = option_token_ids(tokenizer, options, prefix="")
    assert max(len(i) for i in ids) == (3 if len(options) == 3 else 1)
    got = option_logprobs(tiny, batch, ids, batch_size=3, padded=padded)
    for i in range(len(PROMPTS)):
        prompt = batch.tokens[i, : int(batch.lengths[i])].tolist()
        for j, opt in enumerate(ids):
            assert got[i, j] == pytest.approx(direct_logprob(tiny, prompt, opt), abs=1e-4)


def test_qk_mean_replacement_is_batch_exact_with_the_real_token_mask(tiny, tokenizer):
    from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks

    batch = encode(tokenizer, PROMPTS)
    ids = option_token_ids(tokenizer, (" yes", " no"), prefix="")
    base = option_logprobs(tiny, batch, ids)
    with tiny.hooks(fwd_hooks=qk_mean_replacement_hooks(tiny)):
        padded = option_logprobs(tiny, batch, ids, batch_size=4, padded=True)
        single = option_logprobs(tiny, batch, ids, padded=False)
    assert torch.allclose(padded, single, atol=1e-5)
    assert not torch.allclose(padded, base, atol=1e-3)  # the intervention does something


def test_greedy_generate_matches_cache_free_argmax_loop(tiny, tokenizer):
    prompt = encode(tokenizer, PROMPTS[1]).tokens[0]
    ids, text = greedy_generate(tiny, prompt, 6, stop_at_eos=False)
    seq = prompt.tolist()
    for _ in range(6):
        seq.append(int(tiny(torch.tensor([seq]))[0, -1].argmax()))
    assert ids == seq[len(prompt) :]
    assert text == tokenizer.decode(ids, skip_special_tokens=True)
    short, _ = greedy_generate(tiny, prompt, 6, stop=lambda s: True, stop_at_eos=False)
    assert short == ids[:1]
    with pytest.raises(ValueError):
        greedy_generate(tiny, prompt, 0)


def test_greedy_generate_stops_at_eos(tiny, tokenizer):
    prompt = encode(tokenizer, PROMPTS[0]).tokens[0]
    first = int(tiny(prompt[None])[0, -1].argmax())
    model = copy.deepcopy(tiny)
    with torch.no_grad():  # make the first greedy token EOS by boosting its unembedding bias
        model.unembed.b_U[tokenizer.eos_token_id] += 1e4
    ids, text = greedy_generate(model, prompt, 5)
    assert ids == [] and text == "" and first != tokenizer.eos_token_id


# ------------------------------------------------------------------------------------ parsing
@pytest.mark.parametrize(
    "response,expected",
    [
        (" Yes, it is.", "Yes"),
        ("yes", "Yes"),
        (" No.", "No"),
        ("not at all", "No"),
        ("November is cold", "No"),
        ("I think that is true", "Yes"),
        ("that is wrong", "No"),
        ("I do not know", "No"),  # 'no' inside 'not' and 'know': the study's quirk, kept
        ("The answer is correct", "Yes"),
        ("The answer is incorrect", None),  # 'correct' ⊂ 'incorrect'
        ("", None),
        ("Paris", None),
    ],
)
def test_check_yes_no_reproduces_the_study(response, expected):
    assert check_yes_no(response) == expected


@pytest.mark.parametrize(
    "response,expected",
    [
        (" Positive", "Positive"),
        ("negative review", "Negative"),
        ("Positive, not negative", "Positive"),
        ("negative rather than positive", "Negative"),
        ("Neutral", None),
    ],
)
def test_parse_sentiment(response, expected):
    assert parse_sentiment(response) == expected


def test_passkey_rules():
    assert passkey_exact(" 93810.", "93810") and passkey_exact("The passkey is 93810", "93810")
    assert not passkey_exact(" 938101", "93810") and not passkey_exact(" 1 93810", "93810")
    assert passkey_substring(" 1 93810", "93810") and not passkey_substring("9381", "93810")
    assert first_number("none") is None
    assert not passkey_done(" 938", 5) and passkey_done(" 93810.", 5) and passkey_done(" 938101", 5)


def test_chat_prompt_has_one_bos():
    from transformers import AutoTokenizer

    from drope_lens.loading import embedded_checkpoint

    tok = AutoTokenizer.from_pretrained(str(embedded_checkpoint()))
    text = format_prompt(tok, "Is it?", chat=True)
    assert "Is it?" in text and text.rstrip().endswith("assistant")
    ids = encode(tok, text).tokens[0].tolist()
    assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id
    assert format_prompt(tok, "Is it?") == "Is it?"


def test_chat_needs_a_template(tokenizer):
    with pytest.raises(ValueError, match="chat template"):
        format_prompt(tokenizer, "hi", chat=True)


# ------------------------------------------------------------------------------------ statistics
def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == pytest.approx(0.0, abs=1e-12) and hi == pytest.approx(0.1611, abs=1e-4)
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_degradation_handles_zero_baseline():
    assert degradation(0.8, 0.6) == pytest.approx(25.0)
    assert degradation(0.5, 0.75) == pytest.approx(-50.0)
    assert math.isnan(degradation(0.0, 0.3))


def test_batched_generation_equals_one_by_one(tiny, tokenizer):
    from drope_lens.hooks.bos import bos_mlp_ablation_hooks
    from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks
    from drope_lens.tasks.scoring import greedy_generate_batch

    texts = ["the cat is red . answer :", "the dog is big . answer :", "a bird is in the sky ."]
    batch = encode(tokenizer, texts)
    assert len(set(batch.lengths.tolist())) == 1
    for hooks in ([], qk_mean_replacement_hooks(tiny) + bos_mlp_ablation_hooks(0, model=tiny)):
        with tiny.hooks(fwd_hooks=hooks):
            together = greedy_generate_batch(
                tiny, batch.tokens, 5, stop_at_eos=False, stop=lambda r, s: r == 1 and len(s.split()) >= 2
            )
            alone = [greedy_generate(tiny, batch.tokens[i], 5, stop_at_eos=False) for i in range(3)]
        assert together[0] == alone[0] and together[2] == alone[2]
        assert together[1][0] == alone[1][0][:2]  # row 1 stopped early, the others went on


@pytest.mark.parametrize("nope", [False, True])
def test_padded_batch_generation_equals_one_by_one(tiny, tokenizer, nope):
    """Right-padded prompts of different lengths decode exactly as each prompt alone (RoPE positions
    count real tokens; pads stay masked in the cache), with and without intervention hooks."""
    from drope_lens.hooks.bos import bos_mlp_ablation_hooks
    from drope_lens.hooks.mean_replacement import qk_mean_replacement_hooks
    from drope_lens.loading import to_nope
    from drope_lens.tasks.scoring import greedy_generate_batch

    model = to_nope(tiny) if nope else tiny
    texts = ["the cat is red . answer :", "a bird .", "the dog is big and the sky is blue . answer :"]
    batch = encode(tokenizer, texts)
    assert len(set(batch.lengths.tolist())) == 3
    for hooks in ([], qk_mean_replacement_hooks(model) + bos_mlp_ablation_hooks(1, model=model)):
        with model.hooks(fwd_hooks=hooks):
            together = greedy_generate_batch(model, batch.tokens, 6, lengths=batch.lengths, stop_at_eos=False)
            alone = [
                greedy_generate(model, batch.tokens[i, : int(batch.lengths[i])], 6, stop_at_eos=False) for i in range(3)
            ]
        assert together == alone
    with pytest.raises(ValueError, match="lengths"):
        greedy_generate_batch(model, batch.tokens, 2, lengths=batch.lengths + 100)


@pytest.mark.parametrize("padded", [True, False])
def test_per_row_options_equal_direct_computation(tiny, tokenizer, padded):
    """Completion items: each row its own continuations (mixed single / multi-token rows)."""
    batch = encode(tokenizer, PROMPTS)
    rows = [[" yes", " no"], [" red sky", " blue"], [" two three four", " cat"], [" a", " the"]]
    row_ids = [option_token_ids(tokenizer, r, prefix="") for r in rows]
    got = option_logprobs(tiny, batch, [], batch_size=3, padded=padded, row_option_ids=row_ids)
    for i in range(len(PROMPTS)):
        prompt = batch.tokens[i, : int(batch.lengths[i])].tolist()
        for j, opt in enumerate(row_ids[i]):
            assert got[i, j] == pytest.approx(direct_logprob(tiny, prompt, opt), abs=1e-4)
    # shared options given per row give the shared result
    shared = option_token_ids(tokenizer, (" red sky", " blue"), prefix="")
    assert torch.allclose(
        option_logprobs(tiny, batch, shared, batch_size=3),
        option_logprobs(tiny, batch, [], batch_size=3, row_option_ids=[shared] * len(PROMPTS)),
        atol=1e-9,
    )
    with pytest.raises(ValueError, match="rows"):
        option_logprobs(tiny, batch, [], row_option_ids=row_ids[:2])
