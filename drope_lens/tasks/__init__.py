"""Knowledge tasks: parametric (cities, sports) vs contextual (sentiment, passkey) knowledge under
baseline, Q/K mean replacement, BOS-MLP ablation and both combined.

>>> res = run_tasks(model, n={"cities": 50})             # one model
>>> cmp = run_pair_tasks(pair)                            # a RoPE model and its DroPE/NoPE twin
>>> cmp.accuracy_table(); cmp.summary()
"""

from drope_lens.hooks.conditions import CONDITIONS
from drope_lens.tasks.base import CATEGORIES, TaskDataset, TaskItem, convert_to_question, sample_balanced
from drope_lens.tasks.cities import city_pool, load_cities, load_cities_csv
from drope_lens.tasks.conditions import Condition, default_bos_layer, standard_condition
from drope_lens.tasks.custom import load_yes_no_file
from drope_lens.tasks.parsing import check_yes_no, parse_sentiment, passkey_exact, passkey_substring
from drope_lens.tasks.passkey import load_passkey
from drope_lens.tasks.results import (
    ItemResult,
    TaskComparison,
    TaskResults,
    TaskScore,
    degradation,
    wilson_interval,
)
from drope_lens.tasks.runner import SCORING, TASKS, build_datasets, compare_tasks, run_pair_tasks, run_tasks
from drope_lens.tasks.scoring import format_prompt, greedy_generate, option_logprobs
from drope_lens.tasks.sentiment import load_imdb, load_sentiment
from drope_lens.tasks.sizes import DEFAULT_N
from drope_lens.tasks.sports import load_sports

__all__ = [
    "CATEGORIES",
    "TaskDataset",
    "TaskItem",
    "convert_to_question",
    "sample_balanced",
    "city_pool",
    "load_cities",
    "load_cities_csv",
    "CONDITIONS",
    "Condition",
    "default_bos_layer",
    "standard_condition",
    "load_yes_no_file",
    "check_yes_no",
    "parse_sentiment",
    "passkey_exact",
    "passkey_substring",
    "load_passkey",
    "ItemResult",
    "TaskComparison",
    "TaskResults",
    "TaskScore",
    "degradation",
    "wilson_interval",
    "DEFAULT_N",
    "SCORING",
    "TASKS",
    "build_datasets",
    "compare_tasks",
    "run_pair_tasks",
    "run_tasks",
    "format_prompt",
    "greedy_generate",
    "option_logprobs",
    "load_imdb",
    "load_sentiment",
    "load_sports",
]
