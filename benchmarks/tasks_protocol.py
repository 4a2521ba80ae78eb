"""Which knowledge-task protocol measures something on a pair? Measured on both models.

Per choice task (the report's sizes by default: cities 100, sports 60, sentiment 48), per model and
per condition (baseline and the report's three interventions), for each item format (``--formats``:
cities/sports as two-way ``completion`` or as the study's ``yes_no`` questions) and each ``n_shot``
(``--shots``): raw accuracy (arg-max of the option log-probs), calibrated accuracy (contextual
calibration) — both with Wilson 95 % CIs — and the AUROC of the calibrated margin with its bootstrap
95 % CI. Raw and calibrated come from the same forward passes (one ``run_tasks(scoring="calibrated")``
call; the raw arg-max is read off the uncalibrated log-probs it stores). Prints a table, writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/tasks_protocol.py --shots 0,2 --out tasks_protocol.json
"""

from __future__ import annotations

import argparse
import json
import time


def _row(role, fmt, shots, s, items):
    from drope_lens.tasks import wilson_interval

    raw = sum(max(it.logprobs, key=it.logprobs.get) == it.answer for it in items)
    lo, hi = wilson_interval(raw, len(items))
    return {
        "role": role,
        "format": fmt,
        "n_shot": shots,
        "task": s.task,
        "condition": s.condition,
        "n": s.n,
        "raw": raw / len(items),
        "raw_ci": [lo, hi],
        "raw_above_chance": lo > s.chance,
        "calibrated": s.accuracy,
        "calibrated_ci": [s.ci_low, s.ci_high],
        "calibrated_above_chance": s.above_chance,
        "auroc": s.auroc,
        "auroc_ci": [s.auroc_low, s.auroc_high],
        "seconds": s.seconds,
    }


def _fmt(r):
    def ci(v, c):
        return f"{v:.2f} [{c[0]:.2f}, {c[1]:.2f}]"

    return (
        f"| {r['role']} | {r['format']} | {r['n_shot']} | {r['task']} | {r['condition']} | {r['n']} | "
        f"{ci(r['raw'], r['raw_ci'])} | {ci(r['calibrated'], r['calibrated_ci'])}"
        f"{' *' if r['calibrated_above_chance'] else ''} | {ci(r['auroc'], r['auroc_ci'])} |"
    )


def main() -> None:
    import drope_lens as dl
    from drope_lens.atomic import atomic_write_text
    from drope_lens.tasks import run_tasks
    from drope_lens.tasks.conditions import default_bos_layer
    from drope_lens.tasks.runner import build_datasets
    from drope_lens.tasks.sizes import REPORT_N

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--formats", default="completion", help="comma-separated: completion, yes_no")
    ap.add_argument("--shots", default="0,2")
    ap.add_argument("--conditions", default="baseline,bos_mlp,qk,combined")
    ap.add_argument("--tasks", default="cities,sports,sentiment")
    ap.add_argument("--n", type=int, help="items per task (default: the report's sizes)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="tasks_protocol.json")
    args = ap.parse_args()
    tasks, conds = args.tasks.split(","), args.conditions.split(",")
    n = args.n or {t: REPORT_N[t] for t in tasks}
    pair = dl.load_pair()
    bos = {role: default_bos_layer(m) for role, m in pair.items()}
    out = {"pair": pair.labels, "seed": args.seed, "n": n, "conditions": conds, "bos_layer": bos, "rows": []}
    print(
        "| model | format | shots | task | condition | n | raw acc [95 % CI] | calibrated acc [95 % CI] "
        "| AUROC [95 % CI] |\n|---|---|---|---|---|---|---|---|---|",
        flush=True,
    )
    for fmt in args.formats.split(","):
        for shots in [int(s) for s in args.shots.split(",")]:
            ds = build_datasets(pair.tokenizer, tasks=tasks, n=n, seed=args.seed, task_format=fmt)
            for role, model in pair.items():
                t0 = time.perf_counter()
                res = run_tasks(
                    model,
                    tasks=ds,
                    conditions=conds,
                    seed=args.seed,
                    bos_layer=bos[role],
                    scoring="calibrated",
                    n_shot=shots,
                    task_format=fmt,
                )
                for s in res.scores:
                    items = [it for it in res.items if it.task == s.task and it.condition == s.condition]
                    row = _row(role, fmt, shots, s, items)
                    out["rows"].append(row)
                    print(_fmt(row), flush=True)
                out.setdefault("seconds", []).append(
                    {"role": role, "format": fmt, "n_shot": shots, "seconds": time.perf_counter() - t0}
                )
                atomic_write_text(args.out, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
