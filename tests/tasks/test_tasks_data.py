"""Datasets of the knowledge tasks: sizes, balance, determinism, user files, passkey geometry."""

from __future__ import annotations

import json
import re

import pytest

from drope_lens.tasks import (
    convert_to_question,
    load_cities,
    load_cities_csv,
    load_imdb,
    load_passkey,
    load_sentiment,
    load_sports,
    load_yes_no_file,
)
from drope_lens.tasks.passkey import NEEDLE, filler_sentences
from drope_lens.tasks.sentiment import REVIEWS_FILE
from drope_lens.tasks.sports import read_facts


def _texts(ds):
    return [it.text for it in ds.items]


@pytest.mark.parametrize(
    "loader,n,opts",
    [
        (load_cities, 200, ("Yes", "No")),
        (load_sports, 100, ("Yes", "No")),
        (load_sentiment, 100, ("Positive", "Negative")),
    ],
)
def test_sizes_balance_and_determinism(loader, n, opts):
    a, b, c = loader(n, 0), loader(n, 0), loader(n, 1)
    assert len(a) == n and a.options == opts
    assert a.label_counts() == {opts[0]: n // 2, opts[1]: n // 2}
    assert _texts(a) == _texts(b) and [i.answer for i in a.items] == [i.answer for i in b.items]
    assert _texts(a) != _texts(c)
    assert len(set(_texts(a))) == n  # no duplicate prompts


def test_odd_n_is_balanced_within_one_and_too_large_n_is_refused():
    ds = load_sports(11, 3)
    counts = ds.label_counts()
    assert sum(counts.values()) == 11 and abs(counts["Yes"] - counts["No"]) == 1
    with pytest.raises(ValueError, match="more than"):
        load_sports(10_000, 0)
    with pytest.raises(ValueError, match="more than"):
        load_cities(100_000, 0)
    with pytest.raises(ValueError, match="positive int"):
        load_sentiment(0, 0)


def test_cities_statements_are_right_and_wrong_as_labelled():
    ds = load_cities(200, 0)
    for it in ds.items:
        m = it.meta
        assert it.text.endswith(f"Question: {m['question']}\nAnswer:")
        assert m["question"].startswith(f"Is the city of {m['city']} in ")
        assert (it.answer == "Yes") == (m["country"] == m["correct_country"])
    assert len({it.meta["city"] for it in ds.items}) == 200  # each city once
    cities = {it.meta["city"]: it.meta["correct_country"] for it in load_cities(500, 0).items}
    assert cities.get("Tokyo") == "Japan" and cities.get("Cairo") == "Egypt"
    assert cities.get("London") == "United Kingdom"


def test_cities_need_geotext(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "geotext" else real(name, *a))
    with pytest.raises(ModuleNotFoundError, match="pip install geotext==0.4.0"):
        load_cities(10, 0)


def test_convert_to_question_matches_the_study():
    assert (
        convert_to_question("The city of Petaling Jaya is in Malaysia.") == "Is the city of Petaling Jaya in Malaysia?"
    )
    with pytest.raises(ValueError):
        convert_to_question("Paris in France.")


def test_jin_cities_csv(tmp_path):
    path = tmp_path / "cities.csv"
    rows = ["statement,label,city,country,correct_country"]
    for i in range(6):
        rows.append(f"The city of Town{i} is in Landia.,1,Town{i},Landia,Landia")
        rows.append(f"The city of Town{i} is in Otherland.,0,Town{i},Otherland,Landia")
    path.write_text("\n".join(rows) + "\n")
    full = load_cities_csv(path)
    assert len(full) == 12 and full.label_counts() == {"Yes": 6, "No": 6}
    assert full.items[1].meta["question"] == "Is the city of Town0 in Otherland?"
    assert full.items[1].answer == "No"
    sub = load_cities_csv(path, n=4, seed=5)
    assert sub.label_counts() == {"Yes": 2, "No": 2}
    bad = tmp_path / "bad.csv"
    bad.write_text("text,answer\nx,1\n")
    with pytest.raises(ValueError, match="statement"):
        load_cities_csv(bad)


def test_sports_facts_file_and_questions():
    facts = read_facts()
    assert len(facts) >= 60 and len({a for a, _ in facts}) == len(facts)
    true_sport = dict(facts)
    ds = load_sports(128, 0)
    assert ds.label_counts() == {"Yes": 64, "No": 64}
    for it in ds.items:
        assert it.meta["correct_sport"] == true_sport[it.meta["athlete"]]
        assert (it.answer == "Yes") == (it.meta["sport"] == it.meta["correct_sport"])
        assert it.meta["athlete"] in it.meta["question"] and it.meta["sport"] in it.meta["question"]
    assert any("an ice hockey player" in it.text or "an American football player" in it.text for it in ds.items)


def test_reviews_file_is_original_and_well_formed():
    rows = [json.loads(line) for line in REVIEWS_FILE.read_text().splitlines() if line.strip()]
    labels = [r["label"] for r in rows]
    assert labels.count("positive") >= 50 and labels.count("negative") >= 50
    assert len({r["text"] for r in rows}) == len(rows)
    for r in rows:
        assert 2 <= len(re.findall(r'[.!?]"?(\s|$)', r["text"])) <= 5, r["text"]
        assert re.search(r'"[^"]+"', r["text"]), "every review names an (invented) film in quotes"


def test_imdb_from_local_files(tmp_path):
    csv_path = tmp_path / "imdb.csv"
    csv_path.write_text(
        "text,label\n" + "".join(f'"review {i} {"great" if i % 2 else "bad"}",{i % 2}\n' for i in range(20))
    )
    ds = load_imdb(csv_path, n=10, seed=0)
    assert len(ds) == 10 and ds.label_counts() == {"Positive": 5, "Negative": 5}
    for it in ds.items:
        assert ("great" in it.meta["review"]) == (it.answer == "Positive")
    jl = tmp_path / "imdb.jsonl"
    jl.write_text(
        "\n".join(json.dumps({"text": "x" * 3000, "label": lab}) for lab in ["pos", "neg", "positive", "negative"])
    )
    ds = load_imdb(jl, n=4, max_chars=1500)
    assert all(len(it.meta["review"]) == 1500 and it.meta["chars"] == 3000 for it in ds.items)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "x", "label": "meh"}))
    with pytest.raises(ValueError, match="label"):
        load_imdb(bad, n=None)


def test_yes_no_file_reads_jin_json(tmp_path):
    path = tmp_path / "sports_qa.json"
    data = [{"question": f"Does player {i} play golf?", "answer": i % 3 == 0} for i in range(12)]
    path.write_text(json.dumps({"version": 1, "data": data}))
    ds = load_yes_no_file(path, name="sports_jin")
    assert ds.name == "sports_jin" and ds.label_counts() == {"Yes": 4, "No": 8}
    assert load_yes_no_file(path, n=8, seed=1).label_counts() == {"Yes": 4, "No": 4}


# ------------------------------------------------------------------------------------ passkey
@pytest.fixture(scope="module")
def smol_tokenizer():
    from transformers import AutoTokenizer

    from drope_lens.loading import embedded_checkpoint

    return AutoTokenizer.from_pretrained(str(embedded_checkpoint()))


def _ids(tok, text):
    return [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("length", [128, 256, 512])
def test_passkey_length_and_depth(smol_tokenizer, length):
    tok = smol_tokenizer
    ds = load_passkey(tok, lengths=(length,), n=20, depth=0.5, seed=0)
    assert len(ds) == 20 and len({it.answer for it in ds.items}) == 20
    for it in ds.items:
        assert re.fullmatch(r"\d{5}", it.answer)
        n_tok = len(_ids(tok, it.text))
        assert n_tok == it.meta["n_tokens"] and abs(n_tok - length) <= 0.02 * length
        assert re.findall(r"\d+", it.text) == [it.answer]  # the key is the only number
        # depth measured independently: filler tokens before / all filler tokens
        body = it.text.split("\n\n")[1]
        before, after = body.split(NEEDLE.format(key=it.answer))
        nb = len(tok(before.strip(), add_special_tokens=False)["input_ids"]) if before.strip() else 0
        na = len(tok(after.strip(), add_special_tokens=False)["input_ids"]) if after.strip() else 0
        assert abs(nb / (nb + na) - it.meta["depth_actual"]) <= 2 / (nb + na)
        # the needle sits at the sentence boundary nearest to the requested depth
        half_sentence = max(len(tok(" " + s, add_special_tokens=False)["input_ids"]) for s in filler_sentences()) / 2
        assert abs(nb - 0.5 * (nb + na)) <= half_sentence + 1


@pytest.mark.parametrize("depth", [0.0, 0.25, 1.0])
def test_passkey_depth_extremes(smol_tokenizer, depth):
    ds = load_passkey(smol_tokenizer, lengths=(256,), n=3, depth=depth, seed=0)
    for it in ds.items:
        assert abs(it.meta["depth_actual"] - depth) <= 0.06
        body = it.text.split("\n\n")[1]
        if depth == 0.0:
            assert body.startswith("The secret passkey is")
        if depth == 1.0:
            assert body.endswith("Remember this number.")


def test_passkey_determinism_and_errors(smol_tokenizer):
    tok = smol_tokenizer
    a = load_passkey(tok, lengths=(200,), n=5, seed=0)
    assert _texts(a) == _texts(load_passkey(tok, lengths=(200,), n=5, seed=0))
    assert [i.answer for i in a.items] != [i.answer for i in load_passkey(tok, lengths=(200,), n=5, seed=1).items]
    with pytest.raises(ValueError, match="depth"):
        load_passkey(tok, lengths=(256,), n=2, depth=1.5)
    with pytest.raises(ValueError, match="too short"):
        load_passkey(tok, lengths=(30,), n=2)
    with pytest.raises(ValueError, match="n_ctx"):
        load_passkey(tok, lengths=(4096,), n=2, n_ctx=2048)
    assert not any(ch.isdigit() for s in filler_sentences() for ch in s)


def test_passkey_length_includes_the_chat_template(smol_tokenizer):
    from drope_lens.tasks.scoring import format_prompt

    tok = smol_tokenizer
    ds = load_passkey(tok, lengths=(256,), n=3, wrap=lambda s: format_prompt(tok, s, chat=True))
    for it in ds.items:
        n_tok = len(_ids(tok, format_prompt(tok, it.text, chat=True)))
        assert abs(n_tok - 256) <= 0.02 * 256


@pytest.mark.parametrize("loader,n,pool_of", [("cities", 60, "city"), ("sports", 40, "athlete")])
def test_completion_form_counts_balance_disjointness(loader, n, pool_of):
    from drope_lens.tasks import load_cities, load_sports
    from drope_lens.tasks.cities import COMPLETION_PROMPT as CITY_PROMPT
    from drope_lens.tasks.cities import city_pool
    from drope_lens.tasks.sports import COMPLETION_PROMPT as SPORT_PROMPT

    load = load_cities if loader == "cities" else load_sports
    ds = load(n, seed=4, form="completion")
    assert len(ds) == n and ds.options == ("A", "B") and ds.label_counts() == {"A": n // 2, "B": n // 2}
    truth_key = "correct_country" if loader == "cities" else "correct_sport"
    if loader == "cities":
        truth = {c.name: c.country for c in city_pool()}
    else:
        truth = dict(read_facts())
    for it in [*ds.items, *ds.demo_pool]:
        a, b = it.meta["choices"]
        assert a != b and ds.answer_text(it) == it.meta[truth_key] == truth[it.meta[pool_of]]
        # the prompt names the entity and neither option: the answer must come from the weights
        assert it.text == (CITY_PROMPT if loader == "cities" else SPORT_PROMPT).format(**{pool_of: it.meta[pool_of]})
        assert a not in it.text and b not in it.text
    used = {it.meta[pool_of] for it in ds.items}
    assert len(used) == n  # each entity once
    assert used.isdisjoint(it.meta[pool_of] for it in ds.demo_pool) and ds.demo_pool
    again = load(n, seed=4, form="completion")
    assert [it.to_dict() for it in again.items] == [it.to_dict() for it in ds.items]
    assert [it.text for it in load(n, seed=5, form="completion").items] != [it.text for it in ds.items]
    assert "CC BY" in ds.source if loader == "cities" else "project" in ds.source
    with pytest.raises(ValueError, match="form"):
        load(4, form="multiple")


def test_completion_items_need_their_continuations():
    from drope_lens.tasks import TaskDataset, TaskItem

    good = TaskItem("q", "A", {"c": ["x", "y"]})
    TaskDataset("t", "parametric", "choice", [good], ("A", "B"), choices_key="c")
    for bad in ({"c": ["x"]}, {"c": ["x", "x"]}, {}):
        with pytest.raises(ValueError, match="continuations"):
            TaskDataset("t", "parametric", "choice", [TaskItem("q", "A", bad)], ("A", "B"), choices_key="c")
    with pytest.raises(ValueError, match="sports facts"):
        from drope_lens.tasks import load_sports

        load_sports(len(read_facts()) + 1, form="completion")
