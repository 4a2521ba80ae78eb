"""Cities (parametric): "Is the city of X in Y?" from GeoNames, or from Jin et al.'s ``cities.csv``.

GeoNames data (CC BY 4.0, geonames.org) is read at run time from the files shipped inside the
``geotext`` package (``cities15000.txt``, ``countryInfo.txt``); nothing is copied into drope_lens.

Construction (:func:`load_cities`): the well-known pool is the most populous cities whose ASCII
name is unambiguous (every namesake in the file has < 10% of its population), is not a country name and does not
contain its own country's name,
at most ``per_country`` per country and only from sovereign-country codes. ``n`` distinct cities
are drawn with ``random.Random(seed)``; half of them (rounded up) give their true statement, the
other half a false one with a country drawn from the other pool countries. Each city appears once,
so a true and a false version of the same city never both appear.

``form="completion"``: the same cities, each asked as ``Q: In which country is X?\nA:`` and scored
by the log-probability of its true country against one distractor country (drawn as above); the
true country is option ``A`` for half of the items (rounded up) and ``B`` for the rest. The prompt
never names a country, so the answer comes from the weights. A 135M model answers these (it fails
the yes/no verification of the same facts; measured in ``benchmarks/README.md``).
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
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
    convert_to_question,
    read_rows,
    sample_balanced,
    two_way_item,
)

OPTIONS = ("Yes", "No")
#: Territories and codes that are not (or no longer) countries, or whose status is contested.
EXCLUDED_CODES = frozenset(
    {"HK", "MO", "PR", "PS", "XK", "CS", "AN", "EH", "GU", "VI", "RE", "GP", "MQ", "GF", "YT", "NC", "PF"}
)
#: Country names read with a definite article.
WITH_THE = frozenset(
    {
        "United States",
        "United Kingdom",
        "Netherlands",
        "Philippines",
        "Democratic Republic of the Congo",
        "Republic of the Congo",
        "United Arab Emirates",
        "Czech Republic",
        "Dominican Republic",
        "Central African Republic",
        "Bahamas",
        "Gambia",
        "Ivory Coast",
    }
)
GEOTEXT_HINT = "pip install geotext==0.4.0"
COMPLETION_PROMPT = "Q: In which country is {city}?\nA:"


@dataclass(frozen=True)
class City:
    name: str
    country_code: str
    country: str
    population: int


def geonames_dir() -> Path:
    """Folder holding geotext's GeoNames files (found without importing geotext)."""
    spec = importlib.util.find_spec("geotext")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The cities task reads GeoNames data shipped in the geotext package: {GEOTEXT_HINT} "
            "(or use load_cities_csv with your own file)."
        )
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    for name in ("cities15000.txt", "countryInfo.txt"):
        if not (data / name).is_file():
            raise FileNotFoundError(f"{data / name} is missing; reinstall geotext ({GEOTEXT_HINT}).")
    return data


def read_countries(path: Path) -> dict[str, str]:
    """ISO-2 code → country name from GeoNames ``countryInfo.txt``."""
    out: dict[str, str] = {}
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            cols = line.rstrip("\n").split("\t")
            if len(cols) > 4 and cols[4].strip():
                out[cols[0]] = cols[4].strip()
    return out


def _is_plain(name: str) -> bool:
    return all(c.isascii() and (c.isalpha() or c in " -'") for c in name) and name[:1].isupper()


def _dominant(pop: int, same_name: list[int]) -> bool:
    """The most populous city of its name, with every namesake under 10% of its population."""
    others = sorted(same_name, reverse=True)
    return others[0] == pop and (len(others) == 1 or others[1] < 0.1 * pop)


def city_pool(*, pool_size: int = 500, per_country: int = 20, data_dir: Optional[Path] = None) -> list[City]:
    """The well-known city pool, most populous first (see the module docstring)."""
    data = Path(data_dir) if data_dir is not None else geonames_dir()
    countries = read_countries(data / "countryInfo.txt")
    country_names = {c.lower() for c in countries.values()}
    rows = []
    by_name: dict[str, list[int]] = {}
    with open(data / "cities15000.txt", encoding="utf-8") as f:
        for line in f:
            cols = line.rstrip("\n").split("\t")
            if len(cols) < 15:
                continue
            name, ascii_name, code, population = cols[1], cols[2], cols[8], cols[14]
            by_name.setdefault(ascii_name.lower(), []).append(int(population or 0))
            rows.append((name, ascii_name, code, int(population or 0)))
    rows.sort(key=lambda r: (-r[3], r[1]))
    pool: list[City] = []
    per: dict[str, int] = {}
    for name, ascii_name, code, pop in rows:
        country = countries.get(code)
        if (
            country is None
            or code in EXCLUDED_CODES
            or name != ascii_name
            or not _is_plain(name)
            or not _dominant(pop, by_name[name.lower()])
            or name.startswith("City of")
            or name.lower() in country_names
            or country.lower() in name.lower()
            or per.get(code, 0) >= per_country
        ):
            continue
        per[code] = per.get(code, 0) + 1
        pool.append(City(name, code, country, pop))
        if len(pool) == pool_size:
            break
    return pool


def _country_phrase(country: str) -> str:
    return f"the {country}" if country in WITH_THE else country


def city_item(city: str, country: str, correct_country: str) -> TaskItem:
    statement = f"The city of {city} is in {_country_phrase(country)}."
    question = convert_to_question(statement)
    return TaskItem(
        text=YES_NO_PROMPT.format(question=question),
        answer="Yes" if country == correct_country else "No",
        meta={
            "statement": statement,
            "question": question,
            "city": city,
            "country": country,
            "correct_country": correct_country,
        },
    )


def completion_item(city: str, correct_country: str, distractor: str, true_first: bool) -> TaskItem:
    """ "In which country is X?" with the true country and a distractor as options A / B."""
    return two_way_item(
        COMPLETION_PROMPT.format(city=city), "city", city, "correct_country", correct_country, distractor, true_first
    )


def load_cities(
    n: Optional[int] = 200,
    seed: int = 0,
    *,
    pool_size: int = 500,
    per_country: int = 20,
    data_dir: Optional[Path] = None,
    form: str = "yes_no",
) -> TaskDataset:
    """Balanced GeoNames city items (via geotext): yes/no "Is the city of X in Y?" or completion."""
    if form not in FORMATS:
        raise ValueError(f"Unknown form {form!r}; choose from {FORMATS}.")
    pool = city_pool(pool_size=pool_size, per_country=per_country, data_dir=data_dir)
    n = check_n(n, len(pool), f"the GeoNames city pool (pool_size={pool_size})")
    rng = random.Random(seed)
    chosen = rng.sample(pool, n)
    countries = sorted({c.country for c in pool})
    if form == "completion":
        return _completion_cities(pool, chosen, countries, rng, seed)
    items = []
    for i, city in enumerate(chosen):
        if i < (n + 1) // 2:
            items.append(city_item(city.name, city.country, city.country))
        else:
            wrong = rng.choice([c for c in countries if c != city.country])
            items.append(city_item(city.name, wrong, city.country))
    rng.shuffle(items)
    chosen_names = {c.name for c in chosen}
    rest = [c for c in pool if c.name not in chosen_names]
    demo_rng = random.Random(seed + 1)
    demos = []
    for i, city in enumerate(rest):  # alternate true / false statements about unused cities
        country = city.country if i % 2 == 0 else demo_rng.choice([c for c in countries if c != city.country])
        demos.append(city_item(city.name, country, city.country))
    return TaskDataset(
        "cities",
        "parametric",
        "choice",
        items,
        OPTIONS,
        source="GeoNames cities15000 via geotext (CC BY 4.0)",
        template=YES_NO_PROMPT,
        slot="question",
        content_key="question",
        demo_pool=demos,
    )


def _completion_cities(
    pool: list[City], chosen: list[City], countries: list[str], rng: random.Random, seed: int
) -> TaskDataset:
    n = len(chosen)
    items = [
        completion_item(c.name, c.country, rng.choice([k for k in countries if k != c.country]), i < (n + 1) // 2)
        for i, c in enumerate(chosen)
    ]
    rng.shuffle(items)
    used = {c.name for c in chosen}
    demo_rng = random.Random(seed + 1)
    demos = [
        completion_item(c.name, c.country, demo_rng.choice([k for k in countries if k != c.country]), i % 2 == 0)
        for i, c in enumerate(c for c in pool if c.name not in used)
    ]
    return TaskDataset(
        "cities",
        "parametric",
        "choice",
        items,
        SLOTS,
        source="GeoNames cities15000 via geotext (CC BY 4.0)",
        template=COMPLETION_PROMPT,
        slot="city",
        content_key="city",
        demo_pool=demos,
        choices_key="choices",
    )


def load_cities_csv(path: Union[str, Path], n: Optional[int] = None, seed: int = 0) -> TaskDataset:
    """Jin et al. / Marks & Tegmark ``cities.csv`` (``statement,label,city,country,correct_country``).

    ``label`` may be 1/0 or True/False. With ``n``, a balanced sample (``random.Random(seed)``).
    """
    path = Path(path)
    items = []
    rows = read_rows(path, "statement,label,city,country,correct_country")
    need = {"statement", "label"}
    found = sorted(rows[0]) if rows and isinstance(rows[0], dict) else []
    if rows and not need <= set(found):
        raise DropeLensInputError(
            f"{path}: needs columns {sorted(need)} "
            f"(Jin format: statement,label,city,country,correct_country); found {found}."
        )
    for row in rows:
        label = str(row["label"]).strip().lower()
        if label not in ("1", "0", "true", "false"):
            raise DropeLensInputError(f"{path}: label {row['label']!r} is not 1/0/True/False.")
        question = convert_to_question(row["statement"])
        meta = {k: row[k] for k in ("statement", "city", "country", "correct_country") if k in row}
        items.append(
            TaskItem(
                YES_NO_PROMPT.format(question=question),
                "Yes" if label in ("1", "true") else "No",
                {**meta, "question": question},
            )
        )
    if not items:
        raise DropeLensInputError(f"{path} holds no rows.")
    items = sample_balanced(items, n, seed, what=str(path), options=OPTIONS) if n else items
    return TaskDataset("cities", "parametric", "choice", items, OPTIONS, source=str(path))
