#!/usr/bin/env python
"""drope_lens benchmarks: time and memory of each analysis vs bare forwards and vs the study's way.

    python -m benchmarks.run                  # everything, embedded pair, ~15 min on 2 CPU cores
    python -m benchmarks.run --quick          # short smoke run (~3 min)
    python -m benchmarks.run --cases detection,phase --repeat 3
    python -m benchmarks.run --model llama2-7b-shaped --device cuda   # GPU only

Each case runs in a fresh child process (``--child CASE``) that loads the models, then times each
section (best of ``--repeat``) and measures its peak memory above what the process held before it
(CPU: the kernel's resident high-water mark, reset per section through ``/proc/self/clear_refs``;
CUDA: ``torch.cuda.max_memory_allocated``). The child prints one JSON line; the parent collects
them into ``--out`` (JSON) and the table of ``benchmarks/README.md`` (between its markers).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from benchmarks import report_table

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ALL_CASES = ("detection", "disruption", "phase", "sinks", "tasks", "report", "scaling")
#: Long-context cases (benchmarks/long_cases.py), run only when named in --cases.
EXTRA_CASES = ("long_detection", "long_phase", "short_ppl", "jin", "context")
MARK = "BENCH_RESULT "


# ------------------------------------------------------------------------------------------- memory
def _trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc), so RSS before a section is what is really held."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _status_kb(field: str) -> Optional[float]:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(rf"^{field}:\s+(\d+)\s+kB", text, re.M)
    return float(m.group(1)) if m else None


class PeakMeter:
    """Peak memory of a code section above the memory held when it started (MB).

    CPU: reset the resident high-water mark (``echo 5 > /proc/self/clear_refs``) and read
    ``VmHWM``; where that is impossible a 5 ms sampling thread reads ``VmRSS`` instead.
    CUDA: ``max_memory_allocated`` after ``reset_peak_memory_stats``.
    """

    def __init__(self, device: str = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self._base = 0.0
        self._sampler: Optional[threading.Thread] = None
        self._stop = threading.Event()
        self._peak_kb = 0.0
        self.method = "cuda" if self.cuda else ("hwm" if self._can_reset() else "sampling")

    @staticmethod
    def _can_reset() -> bool:
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return _status_kb("VmHWM") is not None
        except OSError:
            return False

    def start(self) -> None:
        gc.collect()
        _trim_heap()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated() / 2**20
            return
        self._base = (_status_kb("VmRSS") or 0.0) / 1024
        if self.method == "hwm":
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            return
        self._peak_kb = _status_kb("VmRSS") or 0.0
        self._stop.clear()

        def sample():
            while not self._stop.wait(0.005):
                self._peak_kb = max(self._peak_kb, _status_kb("VmRSS") or 0.0)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def stop(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            return torch.cuda.max_memory_allocated() / 2**20 - self._base
        if self.method == "hwm":
            return (_status_kb("VmHWM") or 0.0) / 1024 - self._base
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join()
        return self._peak_kb / 1024 - self._base

    def held_mb(self) -> float:
        if self.cuda:
            import torch

            return torch.cuda.memory_allocated() / 2**20
        return (_status_kb("VmRSS") or 0.0) / 1024


def measure(fn, repeat: int, meter: PeakMeter) -> dict:
    """Best-of-``repeat`` wall time and the largest peak over the runs."""
    times, peaks = [], []
    for _ in range(max(1, repeat)):
        meter.start()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        peaks.append(meter.stop())
        times.append(dt)
    return {"status": "ok", "time_s": min(times), "times": times, "peak_delta_mb": max(peaks)}


# ------------------------------------------------------------------------------------------- machine
def machine_info(device: str = "cpu") -> dict:
    info: dict[str, Any] = {}
    try:
        cpu = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", cpu, re.M)
        info["cpu"] = m.group(1).strip() if m else platform.processor()
    except OSError:
        info["cpu"] = platform.processor() or "?"
    info["cores"] = os.cpu_count()
    try:
        mem = Path("/proc/meminfo").read_text()
        kb = float(re.search(r"MemTotal:\s+(\d+)", mem).group(1))
        info["ram"] = f"{kb / 2**20:.1f} GiB"
    except (OSError, AttributeError):
        pass
    info["python"] = platform.python_version()
    for pkg, name in (("torch", "torch"), ("transformer_lens", "transformer-lens"), ("transformers", "transformers")):
        try:
            from importlib.metadata import version

            info[name] = version(name if pkg != "torch" else "torch")
        except Exception:  # noqa: BLE001
            info[name] = "?"
    try:
        import torch

        info["torch threads"] = torch.get_num_threads()
        if torch.cuda.is_available() and str(device).startswith("cuda"):
            info["gpu"] = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001
        pass
    return info


def load_avg() -> Optional[list[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ------------------------------------------------------------------------------------------- child
def run_child(args: argparse.Namespace) -> list[dict]:
    """Load the models once, then run each job of ``--jobs`` (or the single ``--child`` case)."""
    import torch

    torch.set_num_threads(args.threads)
    torch.set_grad_enabled(False)
    from benchmarks import cases

    device = resolve_device(args.device, args.model)
    t0 = time.perf_counter()
    models = cases.load_models(args.model, device)
    load_s = time.perf_counter() - t0
    jobs = json.loads(args.jobs) if args.jobs else [{"case": args.child}]
    meter = PeakMeter(device)
    return [run_job(args, models, meter, job, load_s) for job in jobs]


def run_job(args, models, meter: "PeakMeter", job: dict, load_s: float) -> dict:
    """Build one case and measure each of its sections. Returns the case record."""
    from benchmarks import cases, long_cases  # noqa: F401 (long_cases registers its builders)

    case, label_case = job["case"], job.get("as", job["case"])
    n_texts, seq_len = int(job.get("n_texts", args.n_texts)), int(job.get("seq_len", args.seq_len))
    repeat = int(job.get("repeat", args.repeat))
    only = job.get("only_sections")
    device = models.device
    roles = [r for r in args.roles.split(",") if r]
    record: dict[str, Any] = {
        "case": label_case,
        "model": args.model,
        "device": device,
        "n_texts": n_texts,
        "seq_len": seq_len,
        "batch_size": args.batch_size,
        "roles": roles,
        "load_s": load_s,
        "params_mb": models.params_mb("rope"),
        "load_avg_start": load_avg(),
    }
    try:
        wl = cases.make_workload(models, n_texts, seq_len, args.batch_size)
        record["workload"] = wl.describe()
        opts = {
            "seeds": args.seeds,
            "heavy_repeat": args.heavy_repeat,
            "task_n": _task_n(args),
            "context_lengths": job.get("context_lengths"),
        }
        spec = cases.CASE_BUILDERS[case](models, wl, roles, opts)
    except Exception as exc:  # noqa: BLE001
        record.update(status="error", reason=f"{type(exc).__name__}: {exc}"[:400])
        return record
    if only:
        keep = set(only.split(","))
        spec.sections = [s for s in spec.sections if s.name in keep]
    record.update(label=spec.label, analysis_needs_logits=spec.analysis_needs_logits, **spec.meta)
    # one-time costs (lazy HF loading, first-call initialisation) before any measurement
    warm = cases.make_workload(models, 1, min(16, seq_len), 1)
    for role in roles:
        models.tl[role](warm.batch.tokens.to(device), return_type=None)
    if any(s.name in ("hf_forward", "study_way") for s in spec.sections):
        for role in cases._hf_roles(models, roles):
            models.hf(role)(input_ids=warm.batch.tokens.to(device))
            if case == "phase":
                models.hf(role, "eager")
    record["memory_method"] = meter.method
    record["held_before_mb"] = meter.held_mb()
    # repeats are interleaved (round robin over the sections), so a change in machine load during
    # the case hits every section alike instead of biasing the ones measured last
    sections: dict[str, dict] = {}
    runs: dict[str, list[dict]] = {sec.name: [] for sec in spec.sections}
    for r in range(max(1, repeat)):
        for sec in spec.sections:
            rep = repeat if sec.max_repeat is None else min(repeat, sec.max_repeat)
            if r >= rep or (runs[sec.name] and runs[sec.name][-1].get("status") == "error"):
                continue
            try:
                res = measure(sec.fn, 1, meter)
            except Exception as exc:  # noqa: BLE001 - recorded, not fatal for the other sections
                res = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:400]}
            runs[sec.name].append(res)
            print(
                f"  {label_case}/{sec.name} #{r + 1}: {res.get('time_s', float('nan')):.2f} s, "
                f"peak +{res.get('peak_delta_mb', float('nan')):.0f} MB",
                file=sys.stderr,
                flush=True,
            )
    for sec in spec.sections:
        got = runs[sec.name]
        ok = [g for g in got if g.get("status") == "ok"]
        if ok:
            times = [g["time_s"] for g in ok]
            res = {
                "status": "ok",
                "time_s": min(times),
                "times": times,
                "peak_delta_mb": max(g["peak_delta_mb"] for g in ok),
            }
        else:
            res = got[-1] if got else {"status": "error", "reason": "not run"}
        res["passes"] = sec.passes
        res["repeats"] = len(got)
        sections[sec.name] = res
    record["sections"] = sections
    record["status"] = "ok" if sections.get("drope_lens", {}).get("status") == "ok" else "error"
    if record["status"] != "ok":
        record["reason"] = sections.get("drope_lens", {}).get("reason", "drope_lens section missing")
    record["load_avg_end"] = load_avg()
    return record


def _task_n(args) -> Optional[dict]:
    if args.task_n is None:
        return None
    from drope_lens.tasks.sizes import scaled_n

    return scaled_n(int(args.task_n))


def resolve_device(device: str, model: str) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if model == "llama2-7b-shaped":
        from benchmarks.cases import require_cuda

        require_cuda(device)
    return device


# ------------------------------------------------------------------------------------------- parent
def spawn(argv: list[str], timeout: float) -> tuple[int, str, str, float, float]:
    """Run a command; returns (rc, stdout, stderr, wall seconds, peak RSS MB of that process)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=str(ROOT))
        rc, maxrss_kb = None, 0.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                rc = os.waitstatus_to_exitcode(status)
                maxrss_kb = float(usage.ru_maxrss)
                proc.returncode = rc
                break
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = rc = 124
                maxrss_kb = float(usage.ru_maxrss)
                break
            time.sleep(0.2)
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return rc, out.read(), err.read(), wall, maxrss_kb / 1024


def child_argv(args: argparse.Namespace, jobs: list[dict]) -> list[str]:
    vals = dict(
        model=args.model,
        device=args.device,
        n_texts=args.n_texts,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seeds=args.seeds,
        repeat=args.repeat,
        threads=args.threads,
        roles=args.roles,
        heavy_repeat=args.heavy_repeat,
        task_n=args.task_n,
    )
    argv = [sys.executable, "-m", "benchmarks.run", "--child", jobs[0]["case"], "--jobs", json.dumps(jobs)]
    for k, v in vals.items():
        if v is None or v == "":
            continue
        argv += [f"--{k.replace('_', '-')}", str(v)]
    return argv


def run_jobs(args, jobs: list[dict]) -> list[dict]:
    """One child process for ``jobs`` (models loaded once); one record per job."""
    rc, out, err, wall, maxrss = spawn(child_argv(args, jobs), args.timeout)
    recs = [json.loads(line[len(MARK) :]) for line in out.splitlines() if line.startswith(MARK)]
    if not recs:
        tail = (err or out).strip().splitlines()[-3:]
        reason = f"child exited {rc}: " + " | ".join(tail)[-400:]
        return [
            {
                "case": j.get("as", j["case"]),
                "status": "error",
                "reason": reason,
                "model": args.model,
                "n_texts": j.get("n_texts", args.n_texts),
                "seq_len": j.get("seq_len", args.seq_len),
            }
            for j in jobs
        ]
    for rec in recs:
        rec["child_wall_s"] = wall
        rec["child_peak_rss_mb"] = maxrss
    return recs


def run_report_case(args) -> dict:
    """``python -m drope_lens report`` in a fresh folder: wall time and peak RSS of that process."""
    rec: dict[str, Any] = {
        "case": "report",
        "model": args.model,
        "quick": bool(args.quick),
        "label": "drope-lens report" + (" --quick" if args.quick else ""),
        "analysis_needs_logits": True,
        "load_avg_start": load_avg(),
    }
    if args.model != "embedded":
        rec.update(status="skipped", reason="the report case runs on the embedded pair only")
        return rec
    try:
        from drope_lens.cli import report as _report  # noqa: F401
    except ImportError:
        rec.update(status="skipped", reason="not available yet (drope_lens.cli.report missing)")
        return rec
    with tempfile.TemporaryDirectory(prefix="drope-lens-bench-report-") as tmp:
        argv = [sys.executable, "-m", "drope_lens", "report", "--out", tmp] + (["--quick"] if args.quick else [])
        argv += shlex.split(args.report_args or "")
        rec["command"] = " ".join(["python"] + argv[1:]).replace(tmp, "<tmpdir>")
        rc, out, err, wall, maxrss = spawn(argv, args.report_timeout)
        rec["load_avg_end"] = load_avg()
        if rc != 0:
            tail = (err or out).strip().splitlines()[-3:]
            rec.update(status="error", reason=f"exit {rc}: " + " | ".join(tail)[-400:], wall_s=wall)
            return rec
        steps = {}
        parts = Path(tmp) / "parts"
        for p in sorted(parts.glob("*.json")) if parts.exists() else []:
            try:
                d = json.loads(p.read_text())
                steps[p.stem] = d.get("seconds")
            except (OSError, ValueError):
                pass
        rec["step_seconds"] = steps
    rec["status"] = "ok"
    rec["workload"] = "embedded pair, all steps" + (" (quick)" if args.quick else "")
    rec["sections"] = {
        "drope_lens": {
            "status": "ok",
            "time_s": wall,
            "times": [wall],
            "peak_rss_mb": maxrss,
            "peak_delta_mb": None,
            "passes": None,
            "repeats": 1,
        }
    }
    return rec


def noise_note(payload: dict) -> str:
    """A warning for the README when the machine was busy while the benchmark ran."""
    cores = payload.get("machine", {}).get("cores") or 1
    loads = [c.get("load_avg_start", [0])[0] for c in payload.get("cases", []) if c.get("load_avg_start")]
    loads += [(payload.get("load_avg_start") or [0])[0]]
    worst = max(loads) if loads else 0
    if worst > 1.25 * cores:
        return (
            f"**Warning: the machine was busy** (1-min load average up to {worst:.1f} on {cores} cores while "
            "this ran). Times and ratios are noisy, and sections measured at different moments are not "
            "comparable. Rerun on an idle machine before drawing conclusions."
        )
    return ""


def apply_quick(args) -> None:
    if not args.quick:
        return
    args.n_texts = min(args.n_texts, 2)
    args.seq_len = min(args.seq_len, 128)
    args.seeds = min(args.seeds, 2)
    args.repeat = 1
    args.scaling_lengths = args.scaling_lengths_quick
    args.scaling_texts = "1,2"
    if args.task_n is None:
        args.task_n = 4


def write_outputs(args, payload: dict) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report_table.as_jsonable(payload), indent=1) + "\n")
    if args.no_readme:
        return
    readme = Path(args.readme)
    text = readme.read_text() if readme.exists() else "# drope_lens benchmarks\n"
    readme.write_text(report_table.replace_between_markers(text, report_table.render_results(payload)))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--cases", default=",".join(ALL_CASES), help="comma-separated subset of " + ",".join(ALL_CASES))
    p.add_argument(
        "--model",
        default="embedded",
        choices=("embedded", "tiny", "llama2-7b-shaped", "llama2-shaped-tiny"),
        help="llama2-shaped-tiny: the GPU run's code path with a tiny shape, on any device",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: cpu)")
    p.add_argument("--n-texts", type=int, default=4, help="texts per analysis case (default 4)")
    p.add_argument("--seq-len", type=int, default=256, help="tokens per text, BOS included (default 256)")
    p.add_argument("--batch-size", type=int, default=8, help="drope_lens / bare-forward batch size (default 8)")
    p.add_argument("--seeds", type=int, default=10, help="random-control seeds for disruption (default 10)")
    p.add_argument("--repeat", type=int, default=3, help="best-of-N timing (default 3)")
    p.add_argument(
        "--heavy-repeat",
        type=int,
        default=1,
        help="cap on repeats for the long drope_lens sections (disruption, tasks; default 1)",
    )
    p.add_argument("--roles", default="rope", help="models of the pair per case: rope, drope or rope,drope")
    p.add_argument("--scaling-lengths", default="256,1024,4096", help="sequence lengths for scaling")
    p.add_argument("--scaling-lengths-quick", default="64,256", help=argparse.SUPPRESS)
    p.add_argument("--scaling-texts", default="1,4,16", help="numbers of texts (at --seq-len) for scaling")
    p.add_argument("--long-lengths", default="4096,8192", help="tokens for long_detection (first) and long_phase")
    p.add_argument("--context-lengths", default="512,1024,2048", help="lengths of the context case")
    p.add_argument(
        "--long-pattern-max",
        type=int,
        default=4096,
        help="long_phase times the hook_pattern reference (heads x T x T per layer) only up to this T",
    )
    p.add_argument("--task-n", type=int, default=None, help="items per yes/no task (default 16)")
    p.add_argument("--report-args", default="", help="extra arguments for `drope-lens report`")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads (default: all cores)")
    p.add_argument("--quick", action="store_true", help="short smoke run (~3 min)")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--readme", default=str(HERE / "README.md"))
    p.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    p.add_argument("--timeout", type=float, default=1800, help="per-case child timeout, seconds")
    p.add_argument("--report-timeout", type=float, default=3600)
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--jobs", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        for rec in run_child(args):
            print(MARK + json.dumps(report_table.as_jsonable(rec)), flush=True)
        return 0

    apply_quick(args)
    wanted = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in wanted if c not in ALL_CASES + EXTRA_CASES]
    if bad:
        p.error(f"unknown case(s) {bad}; choose from {ALL_CASES + EXTRA_CASES}")
    if args.model == "llama2-7b-shaped":
        try:
            resolve_device(args.device, args.model)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    command = "python -m benchmarks.run " + " ".join(
        shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])
    )
    payload: dict[str, Any] = {
        "date": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "command": command.strip(),
        "machine": machine_info(args.device),
        "repeat": args.repeat,
        "load_avg_start": load_avg(),
        "settings": {
            k: getattr(args, k)
            for k in (
                "model",
                "device",
                "n_texts",
                "seq_len",
                "batch_size",
                "seeds",
                "repeat",
                "heavy_repeat",
                "roles",
                "scaling_lengths",
                "scaling_texts",
                "quick",
                "threads",
            )
        },
        "cases": [],
    }
    groups: list[list[dict]] = []
    for case in wanted:
        if case == "report":
            groups.append([{"case": "report"}])
        elif case in EXTRA_CASES:
            from benchmarks import long_cases

            groups += [[job] for job in long_cases.plans(args)[case]]
        elif case == "scaling":
            combos = [(1, int(L)) for L in args.scaling_lengths.split(",") if L]
            combos += [(int(n), args.seq_len) for n in args.scaling_texts.split(",") if n]
            for n, L in dict.fromkeys(combos):
                groups.append(
                    [
                        {
                            "case": "detection",
                            "as": "scaling",
                            "n_texts": n,
                            "seq_len": L,
                            "repeat": args.repeat if n * L <= 4096 else 1,
                            "only_sections": "drope_lens,tl_forward_nologits,hf_forward,study_way",
                        }
                    ]
                )
        else:
            groups.append([{"case": case}])
    if args.quick:  # one child for every model case: start-up costs dominate a smoke run
        model_jobs = [j for g in groups for j in g if j["case"] != "report"]
        groups = ([model_jobs] if model_jobs else []) + [g for g in groups if g[0]["case"] == "report"]
    for jobs in groups:
        t0 = time.perf_counter()
        names = ",".join(j.get("as", j["case"]) for j in jobs)
        print(f"[{names}] ...", file=sys.stderr, flush=True)
        if jobs[0]["case"] == "report":
            payload["cases"].append(run_report_case(args))
        else:
            payload["cases"].extend(run_jobs(args, jobs))
        print(f"[{names}] done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        write_outputs(args, payload)  # keep what is done if a later case fails
    payload["load_avg_end"] = load_avg()
    payload["note"] = noise_note(payload)
    write_outputs(args, payload)
    print(report_table.render_verdicts(payload["cases"]))
    if any(c.get("case") in EXTRA_CASES for c in payload["cases"]):
        from benchmarks import long_cases

        print(long_cases.render_long_table(payload["cases"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
