"""The CLI parses and validates its options (drope_lens.options included) before importing torch."""

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "transformer_lens")
# run the CLI in a fresh interpreter, then report its exit code and which heavy modules it imported
SCRIPT = """
import contextlib, io, json, sys
from drope_lens.cli import main
err = io.StringIO()
with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()) as out:
    try:
        rc = main(sys.argv[1:])
    except SystemExit as exc:
        rc = exc.code
print(json.dumps({"rc": rc, "stderr": err.getvalue(), "stdout": out.getvalue(),
                  "heavy": [m for m in %r if m in sys.modules]}))
""" % (HEAVY,)


def _cli(*argv: str) -> dict:
    r = subprocess.run([sys.executable, "-c", SCRIPT, *argv], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize(
    "argv,message",
    [
        (["detect", "--threshold", "-1"], "--threshold (λ) must be a finite number > 0, e.g. 5.0; got -1.0"),
        (["phase", "--tau", "1.5"], "--tau must be in (0, 1], got 1.5"),
        (["tasks", "--tasks", "cities,vibes"], "--tasks: unknown ['vibes']"),
        (["disrupt", "--n-seeds", "1"], "--n-seeds must be >= 2, got 1"),
        (["report", "--steps", "massive,vibes", "--out", "{tmp}"], "Unknown report steps ['vibes']"),
        (["context", "--depths", "0.5,2"], "depths must be fractions in [0, 1], got [0.5, 2.0]"),
        (["track", "--metrics", "ppl,vibes"], "vibes"),
    ],
)
def test_bad_options_refused_without_torch(argv, message, tmp_path):
    res = _cli(*[a.replace("{tmp}", str(tmp_path / "out")) for a in argv])
    assert res["rc"] == 1
    assert message in res["stderr"]
    assert res["heavy"] == [], f"{argv} imported {res['heavy']} before refusing"


def test_help_works_without_torch():
    res = _cli("--help")
    assert res["rc"] == 0
    assert "detect" in res["stdout"] and "report" in res["stdout"] and "track" in res["stdout"]
    assert res["heavy"] == []
    for sub in ("detect", "phase", "tasks", "report", "recalibrate", "track"):
        res = _cli(sub, "--help")
        assert res["rc"] == 0 and "--json" in res["stdout"] + "--json" and res["heavy"] == [], sub


def test_probe_sees_heavy_imports(tmp_path):
    """The probe is real: a command that gets as far as reading a model folder imports the model code."""
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    res = _cli("detect", "--rope", str(folder))
    assert res["rc"] == 1 and "Llama-family" in res["stderr"]
    assert "torch" in res["heavy"]
