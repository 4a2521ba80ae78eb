"""The bad-input catalogue (docs/bad-inputs.md, "Bad inputs and what you get"): one test row per bad input.

CLI rows run ``drope-lens`` in-process with every model loader patched to fail the test, so each
is refused before any model is loaded, as one line on stderr with exit code 1 (argparse's own
rejections: exit 2). API rows check the exception class (a ``drope_lens.errors`` class that is
also the builtin a caller expects) and the message. Model-file rows use tiny random Llama models
saved to tmp folders.
"""

import errno
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import drope_lens.loading
import drope_lens.loading.embedded
import drope_lens.loading.load
import drope_lens.loading.pair
from drope_lens.atomic import atomic_write_text, unwritable_reason
from drope_lens.cli import main
from drope_lens.errors import (
    CorruptFileError,
    DropeLensInputError,
    InputTooLongError,
    MissingFileError,
    NonFiniteError,
    OutputWriteError,
    TokenizerMismatchError,
    UnsupportedModelError,
)
from drope_lens.loading import hooked_from_hf, load_hooked, load_pair
from drope_lens.testing import save_drope_checkpoint, tiny_llama, tiny_tokenizer

# /sys is read-only for everyone, root included, while os.access(/sys, W_OK) says True for root:
# the one folder on a stock Linux box where the real probe and os.access disagree.
READ_ONLY = Path("/sys/drope-lens-probe")
needs_sys = pytest.mark.skipif(
    not Path("/sys").is_dir() or unwritable_reason(READ_ONLY) is None, reason="needs a read-only /sys"
)


# ------------------------------------------------------------------------------ model folders
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny model folders: good, GPT-2, no tokenizer, corrupt safetensors, bad config JSON,
    unknown DroPE attention_type, and a DroPE twin whose tokenizer differs."""
    d = tmp_path_factory.mktemp("models")
    tok = tiny_tokenizer()

    def save(name, model=None):
        p = d / name
        (model or tiny_llama()).save_pretrained(p)
        tok.save_pretrained(p)
        return p

    out = {"good": save("good")}
    from transformers import AutoTokenizer, GPT2Config

    gpt2 = d / "gpt2"
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(gpt2)
    out["gpt2"] = gpt2
    out["no_tokenizer"] = d / "no_tokenizer"
    tiny_llama().save_pretrained(out["no_tokenizer"])
    out["corrupt"] = save("corrupt")
    st = out["corrupt"] / "model.safetensors"
    st.write_bytes(st.read_bytes()[: st.stat().st_size // 2])  # truncated download
    out["bad_config"] = save("bad_config")
    (out["bad_config"] / "config.json").write_text('{"model_type": "llama", ')
    out["banana"] = save_drope_checkpoint(tiny_llama(), tok, d / "banana", attention_type="banana")
    other = AutoTokenizer.from_pretrained(str(out["good"]))
    other.bos_token = "</s>"  # same vocabulary, another BOS: a different tokenizer
    out["drope_other_tok"] = save_drope_checkpoint(tiny_llama(seed=1), other, d / "drope_other_tok")
    return out


@pytest.fixture
def no_loading(monkeypatch):
    """Every way the CLI could load a model fails the test."""

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    for mod, name in (
        (drope_lens.loading, "load_pair"),
        (drope_lens.loading.pair, "load_pair"),
        (drope_lens.loading, "load_hooked"),
        (drope_lens.loading.load, "load_hooked"),
        (drope_lens.loading.embedded, "load_embedded"),
    ):
        monkeypatch.setattr(mod, name, boom)


@pytest.fixture
def live_lock(tmp_path):
    """A results folder whose lock is held by a live process."""
    out = tmp_path / "locked"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    (out / ".lock").write_text(json.dumps({"pid": holder.pid, "started": "2026-01-01T00:00:00Z"}))
    yield out
    holder.kill()
    holder.wait()


# (argv, message); {name} is replaced by a folder from `folders`, {tmp} by a fresh folder,
# {file} by an existing regular file, {locked} by a folder another live process is writing
CLI_ROWS = [
    (["detect", "--threshold", "-1"], "--threshold (λ) must be a finite number > 0, e.g. 5.0; got -1.0"),
    (["detect", "--threshold", "nan"], "--threshold (λ) must be a finite number > 0, e.g. 5.0; got nan"),
    (["report", "--threshold", "0", "--out", "{tmp}"], "--threshold (λ) must be a finite number > 0"),
    (["phase", "--tau", "1.5"], "--tau must be in (0, 1], got 1.5"),
    (["phase", "--tau", "0"], "--tau must be in (0, 1], got 0.0"),
    (["phase", "--gu-eps", "nan"], "--gu-eps must be in (0, 1], got nan"),
    (["phase", "--bos-layer", "-1"], "--bos-layer must be >= 0, got -1"),
    (["tasks", "--tasks", "cities,vibes"], "--tasks: unknown ['vibes']; choose from cities,sports,sentiment,passkey"),
    (["tasks", "--conditions", "vibes"], "--conditions: unknown ['vibes']; choose from baseline"),
    (["tasks", "--passkey-depth", "2"], "--passkey-depth must be in [0, 1], got 2.0"),
    (["report", "--steps", "massive,vibes", "--out", "{tmp}"], "Unknown report steps ['vibes']; choose from"),
    (["report", "--n-seeds", "1", "--out", "{tmp}"], "--n-seeds must be >= 2, got 1"),
    (["detect", "--max-length", "1"], "--max-length must be >= 2, got 1"),
    (["detect", "--text", ""], "--text is empty; give a non-empty text"),
    (["detect", "--texts-file", "/nonexistent/texts.txt"], "--texts-file /nonexistent/texts.txt: no such file"),
    (["report", "--out", "{file}"], "is an existing file, not a folder; choose a folder path"),
    (["report", "--out", "{file}/sub"], "is a file, so the folder cannot be created; choose a folder you can write to"),
    (
        ["detect", "--json", "/nonexistent_dir/x.json"],
        "--json /nonexistent_dir/x.json: folder /nonexistent_dir does not exist",
    ),
    (["detect", "--json", "{tmp_dir}"], "is a folder; give a file path"),
    (["report", "--rope", "/nonexistent/model", "--out", "{tmp}"], "--rope /nonexistent/model: no such folder"),
    (["report", "--rope", "{gpt2}", "--out", "{tmp}"], "drope_lens supports Llama-family causal LMs"),
    (
        ["detect", "--rope", "{no_tokenizer}"],
        "no tokenizer files (none of tokenizer.json, tokenizer.model, vocab.json)",
    ),
    (["detect", "--rope", "{corrupt}"], "model.safetensors is not a readable safetensors file"),
    (["detect", "--rope", "{bad_config}"], "config.json is not valid JSON"),
    (["tasks", "--bos-layer", "3,-2"], "--bos-layer must be >= 0, got 3,-2"),
    (["detect", "--rope", "{good}", "--drope", "{banana}"], "Unknown DroPE attention_type 'banana'"),
    (["report", "--out", "{locked}"], "is being written by another drope-lens report (pid"),
]


def _fill(argv, folders, tmp_path, live_lock):
    file = tmp_path / "a_file.txt"
    file.write_text("x")
    (tmp_path / "dir").mkdir(exist_ok=True)
    subs = {
        "{tmp}": str(tmp_path / "out"),
        "{file}": str(file),
        "{locked}": str(live_lock),
        "{tmp_dir}": str(tmp_path / "dir"),
        **{"{" + k + "}": str(v) for k, v in folders.items()},
    }
    out = []
    for a in argv:
        for key, value in subs.items():
            a = a.replace(key, value)
        out.append(a)
    return out


@pytest.mark.parametrize("argv, message", CLI_ROWS, ids=[" ".join(a) for a, _ in CLI_ROWS])
def test_cli_row(argv, message, folders, tmp_path, live_lock, no_loading, capsys):
    assert main(_fill(argv, folders, tmp_path, live_lock)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith(f"drope-lens {argv[0]}: error: ")
    assert message in err[-1], err[-1]
    assert "Traceback" not in "\n".join(err)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "--dtype", "float64"], "invalid choice: 'float64'"),
        (["detect", "--top", "x"], "invalid int value: 'x'"),
    ],
)
def test_cli_argparse_row(argv, message, no_loading, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_real_subprocess_exit_code(tmp_path):
    """The installed entry point (not just main()): one line, exit 1, well under the load time."""
    r = subprocess.run(
        [sys.executable, "-m", "drope_lens", "detect", "--threshold", "-1"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=os.path.dirname(os.path.dirname(drope_lens.__file__)),
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr and "Loading" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("drope-lens detect: error: --threshold (λ)")


# ------------------------------------------------------------------------------ unwritable paths
@needs_sys
def test_out_in_a_read_only_folder_is_refused_by_the_real_probe(no_loading, capsys):
    assert os.access("/sys", os.W_OK) or os.geteuid() != 0  # what the old os.access check relied on
    assert main(["report", "--out", str(READ_ONLY)]) == 1
    assert "cannot create files in /sys (" in capsys.readouterr().err


@needs_sys
def test_json_in_a_read_only_folder_is_refused(no_loading, capsys):
    assert main(["detect", "--json", "/sys/x.json"]) == 1
    assert "--json /sys/x.json: cannot create files in /sys" in capsys.readouterr().err


def test_probe_failure_is_reported_whatever_the_cause(tmp_path, monkeypatch, no_loading, capsys):
    """The probe creates a file: any OSError there (EROFS, EDQUOT, ...) refuses the folder."""
    import tempfile

    def fail(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", fail)
    assert unwritable_reason(tmp_path) == f"cannot create files in {tmp_path} (Read-only file system)"
    assert main(["report", "--out", str(tmp_path / "o")]) == 1
    assert "Read-only file system" in capsys.readouterr().err


def test_unwritable_cache_dir(tmp_path, monkeypatch, no_loading, capsys):
    """The embedded pair is converted into $DROPE_LENS_CACHE on first use: refused before that."""
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    monkeypatch.setenv("DROPE_LENS_CACHE", str(blocker / "cache"))
    assert main(["detect"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "($DROPE_LENS_CACHE)" in err and "set DROPE_LENS_CACHE to a writable folder" in err
    with pytest.raises(DropeLensInputError, match="is a file, so the folder cannot be created"):
        drope_lens.loading.embedded.embedded_checkpoint()  # API: before the ~30 s conversion


def test_cached_embedded_model_needs_no_writable_cache(tmp_path, monkeypatch):
    """A cache that already holds the checkpoint is only read: no probe, no refusal."""
    from drope_lens.cli.common import check_cache_dir

    target = tmp_path / "smollm2-135m-instruct"
    target.mkdir()
    (target / "config.json").write_text("{}")
    (target / "model.safetensors").write_bytes(b"")
    monkeypatch.setenv("DROPE_LENS_CACHE", str(tmp_path))
    monkeypatch.setattr("drope_lens.atomic.unwritable_reason", lambda p: "must not be called")
    check_cache_dir(type("A", (), {"rope": None})())


# ------------------------------------------------------------------------------ full disk
def _full_disk(monkeypatch, name):
    """Writes into the temp file beside ``name`` fail with ENOSPC, as on a full disk."""
    import builtins

    real_open = builtins.open

    class Full:
        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *e):
            self.fh.close()

        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    def fake_open(path, mode="r", *a, **k):
        fh = real_open(path, mode, *a, **k)
        return Full(fh) if "w" in mode and os.path.basename(str(path)).startswith(f".{name}.") else fh

    monkeypatch.setattr(builtins, "open", fake_open)


def test_full_disk_api_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    atomic_write_text(target, "old")
    _full_disk(monkeypatch, "results.json")
    with pytest.raises(OutputWriteError, match="No space left on device") as exc:
        atomic_write_text(target, "new")
    assert isinstance(exc.value, OSError) and exc.value.__cause__.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_full_disk_cli_one_line_and_old_file_intact(tmp_path, monkeypatch, tokenizer, capsys):
    rope = hooked_from_hf(tiny_llama(seed=2), tokenizer)
    pair = drope_lens.loading.ModelPair(rope, drope_lens.loading.to_nope(rope))
    monkeypatch.setattr(drope_lens.loading, "load_pair", lambda *a, **k: pair)
    out = tmp_path / "massive.json"
    out.write_text('{"old": true}')
    _full_disk(monkeypatch, "massive.json")
    code = main(["detect", "--text", "the cat sat on the red road", "--json", str(out)])
    monkeypatch.undo()
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"drope-lens detect: error: could not write {out}: No space left on device; free disk "
        "space or choose a writable location (any previous massive.json is unchanged)"
    )
    assert json.loads(out.read_text()) == {"old": True}


# ------------------------------------------------------------------------------ API rows
@pytest.fixture(scope="module")
def tiny(tokenizer):
    return hooked_from_hf(tiny_llama(seed=4), tokenizer, n_ctx=24)


TEXTS = ["the cat sat on the red road", "a dog ran to the big city and saw the moon"]


def _api_rows():
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.analysis.perplexity import perplexity
    from drope_lens.analysis.profile_pass import phase_profile
    from drope_lens.data.texts import builtin_texts
    from drope_lens.hooks.bos import bos_mlp_ablation_hooks
    from drope_lens.loading.tokens import encode
    from drope_lens.report.runner import ReportOptions
    from drope_lens.tasks.runner import run_tasks

    long_text = " ".join(["the cat"] * 30)
    return [
        (
            "threshold 0",
            lambda m: detect_massive(m, TEXTS, threshold=0),
            DropeLensInputError,
            "threshold (lambda) must be a finite number > 0, e.g. 5.0; got 0",
        ),
        (
            "threshold -1",
            lambda m: detect_massive(m, TEXTS, threshold=-1.0),
            DropeLensInputError,
            "must be a finite number > 0",
        ),
        ("threshold nan", lambda m: detect_massive(m, TEXTS, threshold=math.nan), DropeLensInputError, "got nan"),
        (
            "empty text",
            lambda m: detect_massive(m, ["the cat", ""]),
            DropeLensInputError,
            "Text 1 is empty (it has no tokens); give non-empty texts.",
        ),
        ("no texts", lambda m: perplexity(m, []), DropeLensInputError, "No texts given."),
        (
            "one-token text, perplexity",
            lambda m: perplexity(m, torch.tensor([[1]])),
            DropeLensInputError,
            "Every text needs at least 2 tokens (BOS + one target) for perplexity.",
        ),
        (
            "one-token text, phase",
            lambda m: phase_profile(m, torch.tensor([[1]])),
            DropeLensInputError,
            "Every text needs at least one token after BOS",
        ),
        (
            "text longer than n_ctx",
            lambda m: perplexity(m, [long_text]),
            InputTooLongError,
            "Text 0 is 61 tokens long, more than the model's n_ctx=24. Shorten it, or pass max_length=24",
        ),
        (
            "max_length 1",
            lambda m: encode(m.tokenizer, TEXTS, max_length=1),
            DropeLensInputError,
            "max_length=1 leaves no room for text tokens.",
        ),
        ("tau 2", lambda m: phase_profile(m, TEXTS, tau=2.0), DropeLensInputError, "tau must be in (0, 1], got 2.0"),
        (
            "tau nan",
            lambda m: phase_profile(m, TEXTS, tau=math.nan),
            DropeLensInputError,
            "tau must be in (0, 1], got nan",
        ),
        (
            "unknown step",
            lambda m: ReportOptions(steps=("vibes",)),
            DropeLensInputError,
            "Unknown report steps ['vibes']; choose from",
        ),
        (
            "report threshold nan",
            lambda m: ReportOptions(threshold=math.nan),
            DropeLensInputError,
            "threshold must be a finite number > 0",
        ),
        (
            "unknown task",
            lambda m: run_tasks(m, tasks=["vibes"]),
            DropeLensInputError,
            "Unknown task 'vibes'; choose from",
        ),
        (
            "unknown condition",
            lambda m: run_tasks(m, tasks=["sports"], conditions=["vibes"], n=2),
            DropeLensInputError,
            "Unknown condition 'vibes'; choose from",
        ),
        (
            "BOS layer out of range",
            lambda m: bos_mlp_ablation_hooks(99, model=m),
            DropeLensInputError,
            "layer 99 is out of range (the model has 2 layers, 0…1); pass a layer in that range.",
        ),
        ("unknown genre", lambda m: builtin_texts("vibes"), DropeLensInputError, "Unknown genre 'vibes'"),
    ]


API_ROWS = _api_rows()


@pytest.mark.parametrize("call, error, message", [r[1:] for r in API_ROWS], ids=[r[0] for r in API_ROWS])
def test_api_row(call, error, message, tiny):
    with pytest.raises(error) as exc:
        call(tiny)
    assert isinstance(exc.value, ValueError)
    assert message in str(exc.value), str(exc.value)


def test_api_model_folder_rows(folders, tokenizer):
    cases = [
        ("/nonexistent/x", MissingFileError, "No model folder at /nonexistent/x"),
        (folders["gpt2"], UnsupportedModelError, "got model_type='gpt2'"),
        (folders["no_tokenizer"], MissingFileError, "no tokenizer files"),
        (folders["corrupt"], CorruptFileError, "incomplete metadata"),
        (folders["bad_config"], CorruptFileError, "config.json is not valid JSON"),
        (folders["banana"], UnsupportedModelError, "Unknown DroPE attention_type 'banana'"),
    ]
    for source, error, message in cases:
        with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
            load_hooked(str(source))
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(CorruptFileError, ValueError)
    # an explicit tokenizer makes the folder's tokenizer files unnecessary
    assert load_hooked(str(folders["no_tokenizer"]), tokenizer=tokenizer).cfg.n_layers == 2


def test_mismatched_tokenizers_in_a_pair(folders):
    with pytest.raises(TokenizerMismatchError, match="tokenize differently .*BOS 1 vs 2"):
        load_pair(str(folders["good"]), str(folders["drope_other_tok"]))
    assert load_pair(str(folders["good"])).drope.cfg.is_nope  # the good folder itself loads


def test_fp16_overflow_names_the_layer_never_zeros(tokenizer):
    """Layer 0's MLP writes ~1e5 into the residual: finite in float32, inf in float16. The NaN it
    causes in layer 1's attention must raise NonFiniteError naming layer 1."""
    from drope_lens.analysis.massive import detect_massive
    from drope_lens.analysis.perplexity import perplexity

    def model(dtype):
        hf = tiny_llama(seed=3)
        with torch.no_grad():
            hf.model.layers[0].mlp.down_proj.weight.mul_(1e5)
        return hooked_from_hf(hf, tokenizer, dtype=dtype)

    fp32 = model(torch.float32)
    assert math.isfinite(perplexity(fp32, TEXTS).ppl)  # the same weights are fine in float32
    _, cache = fp32.run_with_cache(torch.tensor([[1, 5, 6, 7]]), names_filter="blocks.0.hook_resid_post")
    assert float(cache["blocks.0.hook_resid_post"].abs().max()) > torch.finfo(torch.float16).max
    fp16 = model(torch.float16)
    for run in (lambda: perplexity(fp16, TEXTS), lambda: detect_massive(fp16, TEXTS)):
        with pytest.raises(NonFiniteError, match=r"^Layer 1: .*NaN.*Model dtype torch.float16") as exc:
            run()
        assert isinstance(exc.value, FloatingPointError)


# ------------------------------------------------------------------------------ task files
@pytest.mark.parametrize(
    "name, content, loader, error, message",
    [
        (
            "q.json",
            '[{"question": "Is the sky blue?", "answer": "yes"}',
            "yes_no",
            CorruptFileError,
            "is not valid JSON",
        ),
        ("q.json", '{"rows": 3}', "yes_no", CorruptFileError, "expected a JSON list of rows"),
        (
            "q.jsonl",
            '{"question": "Is it?", "answer": "yes"}\n{"question": ',
            "yes_no",
            CorruptFileError,
            "is not valid JSONL",
        ),
        ("q.csv", 'text,answer\n"Is it?",yes\n', "yes_no", DropeLensInputError, "row 0: needs a 'question'"),
        (
            "q.csv",
            'question,answer\n"Is it?",maybe\n',
            "yes_no",
            DropeLensInputError,
            "answer 'maybe' is not true/false, yes/no or 1/0",
        ),
        ("q.txt", "Is it?", "yes_no", DropeLensInputError, "use .csv, .tsv, .jsonl or .json"),
        ("missing.csv", None, "yes_no", MissingFileError, "no such task file"),
        (
            "r.csv",
            'text,label\n"great film",maybe\n',
            "reviews",
            DropeLensInputError,
            "label 'maybe' is not positive/negative",
        ),
        ("r.csv", 'text,label\n"unterminated,1\n', "reviews", CorruptFileError, "is not valid CSV"),
        (
            "c.csv",
            "statement,city\nParis is in France,Paris\n",
            "cities",
            DropeLensInputError,
            "needs columns ['label', 'statement']",
        ),
        ("c.csv", "", "cities", DropeLensInputError, "holds no rows"),
    ],
)
def test_bad_task_files(name, content, loader, error, message, tmp_path):
    from drope_lens.tasks.cities import load_cities_csv
    from drope_lens.tasks.custom import load_yes_no_file
    from drope_lens.tasks.sentiment import read_review_file

    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    fn = {"yes_no": load_yes_no_file, "reviews": read_review_file, "cities": load_cities_csv}[loader]
    with pytest.raises(error) as exc:
        fn(path)
    assert message in str(exc.value), str(exc.value)
    assert str(path) in str(exc.value)


def test_good_task_files_still_load(tmp_path):
    """The shared reader keeps the formats that worked: JSON {"data": [...]}, JSONL, TSV."""
    from drope_lens.tasks.custom import load_yes_no_file
    from drope_lens.tasks.sentiment import read_review_file

    (tmp_path / "q.json").write_text(
        json.dumps({"data": [{"question": "Is it?", "answer": "yes"}, {"question": "Is it not?", "label": 0}]})
    )
    assert [it.answer for it in load_yes_no_file(tmp_path / "q.json").items] == ["Yes", "No"]
    (tmp_path / "r.jsonl").write_text('{"text": "good", "label": "pos"}\n\n{"text": "bad", "label": 0}\n')
    assert read_review_file(tmp_path / "r.jsonl") == [("good", "Positive"), ("bad", "Negative")]
    (tmp_path / "r.tsv").write_text("text\tlabel\ngood, really\t1\n")
    assert read_review_file(tmp_path / "r.tsv") == [("good, really", "Positive")]
