"""Sports (parametric): "Does X play <sport>?" / "Is X a <sport> player?" yes/no questions.

The facts (athlete → sport, widely known public facts written for this project) live in
``drope_lens/data/sports_facts.tsv``. Every athlete yields one true question (their sport) and one
false question (another sport from the file, drawn with ``random.Random(seed)``); the template is
drawn per question. A balanced sample of ``n`` is then taken, so an athlete may appear twice
(once true, once false).

``form="completion"``: each athlete once, asked ``Q: What sport does X play?\nA:`` and scored by the
log-probability of their sport against one other sport from the file (true sport is option ``A``
for half of the items, rounded up, ``B`` for the rest); demonstrations come from the other athletes.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Optional, Union

from drope_lens.errors import DropeLensInputError
from drope_lens.options import FORMATS
from drope_lens.tasks.base import (
    SLOTS,
    YES_NO_PROMPT,
    TaskDataset,
    TaskItem,
    check_n,
    indefinite,
    sample_balanced,
    two_way_item,
    unused_items,
)

OPTIONS = ("Yes", "No")
FACTS_FILE = Path(__file__).resolve().parent.parent / "data" / "sports_facts.tsv"
TEMPLATES = ("Does {athlete} play {sport}?", "Is {athlete} {a_sport} player?")
COMPLETION_PROMPT = "Q: What sport does {athlete} play?\nA:"


def read_facts(path: Union[str, Path, None] = None) -> list[tuple[str, str]]:
    """``(athlete, sport)`` rows of a TSV with header ``athlete<TAB>sport``."""
    path = Path(path) if path is not None else FACTS_FILE
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if {"athlete", "sport"} - set(reader.fieldnames or ()):
            raise DropeLensInputError(f"{path}: needs a header 'athlete<TAB>sport', found {reader.fieldnames}.")
        facts = [(r["athlete"].strip(), r["sport"].strip()) for r in reader if r["athlete"].strip()]
    if len({s for _, s in facts}) < 2:
        raise DropeLensInputError(f"{path}: needs at least two different sports to build false questions.")
    return facts


def sports_item(athlete: str, sport: str, true_sport: str, template: int) -> TaskItem:
    question = TEMPLATES[template].format(athlete=athlete, sport=sport, a_sport=indefinite(sport))
    return TaskItem(
        YES_NO_PROMPT.format(question=question),
        "Yes" if sport == true_sport else "No",
        {"question": question, "athlete": athlete, "sport": sport, "correct_sport": true_sport},
    )


def completion_item(athlete: str, sport: str, distractor: str, true_first: bool) -> TaskItem:
    """ "What sport does X play?" with the true sport and another one as options A / B."""
    return two_way_item(
        COMPLETION_PROMPT.format(athlete=athlete), "athlete", athlete, "correct_sport", sport, distractor, true_first
    )


def load_sports(
    n: Optional[int] = 100, seed: int = 0, *, path: Union[str, Path, None] = None, form: str = "yes_no"
) -> TaskDataset:
    """Balanced athlete–sport items: yes/no questions (up to 2 × the athletes) or completions
    (up to 1 × the athletes)."""
    if form not in FORMATS:
        raise ValueError(f"Unknown form {form!r}; choose from {FORMATS}.")
    facts = read_facts(path)
    sports = sorted({s for _, s in facts})
    source = str(path) if path else "drope_lens/data/sports_facts.tsv (project)"
    rng = random.Random(seed)
    if form == "completion":
        k = check_n(n, len(facts), f"the sports facts ({len(facts)} athletes, one item each)")
        chosen = rng.sample(facts, k)
        items = [
            completion_item(a, s, rng.choice([o for o in sports if o != s]), i < (k + 1) // 2)
            for i, (a, s) in enumerate(chosen)
        ]
        rng.shuffle(items)
        used = {a for a, _ in chosen}
        demo_rng = random.Random(seed + 1)
        demos = [
            completion_item(a, s, demo_rng.choice([o for o in sports if o != s]), i % 2 == 0)
            for i, (a, s) in enumerate(f for f in facts if f[0] not in used)
        ]
        return TaskDataset(
            "sports",
            "parametric",
            "choice",
            items,
            SLOTS,
            source=source,
            template=COMPLETION_PROMPT,
            slot="athlete",
            content_key="athlete",
            demo_pool=demos,
            choices_key="choices",
        )
    pool = []
    for athlete, sport in facts:
        pool.append(sports_item(athlete, sport, sport, rng.randrange(len(TEMPLATES))))
        wrong = rng.choice([s for s in sports if s != sport])
        pool.append(sports_item(athlete, wrong, sport, rng.randrange(len(TEMPLATES))))
    items = sample_balanced(pool, n, seed, what=f"the sports facts ({len(facts)} athletes)", options=OPTIONS)
    demos = unused_items(pool, items, "athlete")
    return TaskDataset(
        "sports",
        "parametric",
        "choice",
        items,
        OPTIONS,
        source=source,
        template=YES_NO_PROMPT,
        slot="question",
        content_key="question",
        demo_pool=demos,
    )
