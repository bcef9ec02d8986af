# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv themselves.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_STORE ?= demo-store
export OMP_WAIT_POLICY := PASSIVE
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: install browser postgres demo demo-model demo-eval test test-fast bench lint format clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this machine serves the 2.13.0 CPU wheel from disk; pyproject keeps
	# an honest range for users, which the installed 2.13.0 already satisfies.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# Debian's Chromium for the browser tests (never a downloaded browser build).
browser:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

# Record the same questions on both bundled demo checkpoints (once), then serve the dashboard
# with a worker on the main checkpoint beside it (the Ask page answers live questions).
demo: install
	@if [ ! -e $(DEMO_STORE)/.demo-recorded-both ]; then \
		$(VENV)/bin/lvlm-interpret demo record --store $(DEMO_STORE) --count 12 \
			--checkpoint both && \
		touch $(DEMO_STORE)/.demo-recorded-both; fi
	$(VENV)/bin/lvlm-interpret serve --store $(DEMO_STORE) --model engine/demo/checkpoint

# Reproduce the bundled checkpoints (main, then weak) from their seed on 2 cores, then score them.
demo-model: install
	$(VENV)/bin/lvlm-interpret demo train
	$(VENV)/bin/lvlm-interpret demo evaluate
	$(VENV)/bin/lvlm-interpret demo train --recipe weak
	$(VENV)/bin/lvlm-interpret demo evaluate --checkpoint weak

demo-eval: install
	$(VENV)/bin/lvlm-interpret demo evaluate --per-kind 120
	$(VENV)/bin/lvlm-interpret demo evaluate --per-kind 120 --checkpoint weak

# Debian's PostgreSQL for the shared-index tests (the tests start their own server).
postgres:
	@[ -x /usr/lib/postgresql/15/bin/pg_ctl ] || \
		{ apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; }

test: install browser postgres
	$(PY) -m pytest -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

BENCH_STORE := artifacts/bench-demo-store

bench: install browser
	$(PY) bench/bench_relevancy.py
	$(PY) bench/seed_relevancy.py
	$(PY) bench/bench_store.py
	$(PY) bench/bench_index.py
	$(PY) bench/bench_dataset.py
	$(PY) bench/bench_long.py
	$(PY) bench/bench_families.py
	$(PY) bench/bench_causal.py
	$(PY) bench/bench_ray.py
	$(PY) bench/bench_perturbation.py
	$(PY) bench/bench_live.py
	@[ -e $(BENCH_STORE)/index.sqlite ] || \
		$(VENV)/bin/lvlm-interpret demo record --store $(BENCH_STORE) --count 6 >/dev/null
	$(PY) bench/bench_dashboard.py --store $(BENCH_STORE)

# Quality bars (issue 12): every map's localisation, deletion and insertion on 200 held-out
# questions beside random and chance, the hallucination flag's ROC AUC (weak checkpoint);
# resumable, tables in artifacts/quality/. Not part of `make bench`: an hour or more on 2 cores.
.PHONY: bench-quality
bench-quality: install
	$(PY) bench/bench_quality.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) $(DEMO_STORE) artifacts .pytest_cache
