"""Sports (parametric): "Does X play <sport>?" / "Is X a <sport> player?" yes/no questions.

The facts (athlete → sport, widely known public facts written for this project) live in
``drope_lens/data/sports_facts.tsv``. Every athlete yields one true question (their sport) and one
false question (another sport from the file, drawn with ``random.Random(seed)``); the template is
drawn per question. A balanced sample of ``n`` is then taken, so an athlete may appear twice
(once true, once false).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path
from typing import Optional, Union

from drope_lens.errors import DropeLensInputError
from drope_lens.tasks.base import YES_NO_PROMPT, TaskDataset, TaskItem, indefinite, sample_balanced

OPTIONS = ("Yes", "No")
FACTS_FILE = Path(__file__).resolve().parent.parent / "data" / "sports_facts.tsv"
TEMPLATES = ("Does {athlete} play {sport}?", "Is {athlete} {a_sport} player?")


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
    return TaskItem(YES_NO_PROMPT.format(question=question), "Yes" if sport == true_sport else "No",
                    {"question": question, "athlete": athlete, "sport": sport,
                     "correct_sport": true_sport})


def load_sports(n: Optional[int] = 100, seed: int = 0, *,
                path: Union[str, Path, None] = None) -> TaskDataset:
    """Balanced athlete–sport yes/no questions (up to 2 × the number of athletes)."""
    facts = read_facts(path)
    sports = sorted({s for _, s in facts})
    rng = random.Random(seed)
    pool = []
    for athlete, sport in facts:
        pool.append(sports_item(athlete, sport, sport, rng.randrange(len(TEMPLATES))))
        wrong = rng.choice([s for s in sports if s != sport])
        pool.append(sports_item(athlete, wrong, sport, rng.randrange(len(TEMPLATES))))
    items = sample_balanced(pool, n, seed, what=f"the sports facts ({len(facts)} athletes)",
                            options=OPTIONS)
    used = {it.meta["athlete"] for it in items}
    demos = [it for it in pool if it.meta["athlete"] not in used]
    return TaskDataset("sports", "parametric", "choice", items, OPTIONS,
                       source=str(path) if path else "drope_lens/data/sports_facts.tsv (project)",
                       template=YES_NO_PROMPT, slot="question", content_key="question",
                       demo_pool=demos)
