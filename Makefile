# Two commands: `make demo` (one simulated session on the embedded default) and `make test`.
# Both create .venv with Python 3.12 on first use.

PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench bench-smoke lock

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -n "$(PYTHON)" || { echo "Python 3.12 is required (pandas-ta needs it); install it or pass PYTHON=/path/to/python3.12"; exit 1; }
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/catalyst demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q

# requirements.txt: the hash-locked lock file Python buildpacks and the Docker image install.
# Regenerate it whenever pyproject.toml's dependencies change (tests/test_deploy.py fails until you do).
lock: $(STAMP)
	@test -x $(VENV)/bin/uv || $(VENV)/bin/python -m pip install --quiet 'uv>=0.5'
	$(VENV)/bin/python deploy/lock.py $(VENV)/bin/uv

# `make bench`: the real stack (Redis DB BENCH_REDIS, a private PostgreSQL cluster with pg_stat_statements,
# celery worker + beat) against bare Celery; writes docs/benchmarks.json and docs/benchmarks.png (~4-5 min per
# N and concurrency). BENCH_N=10000 or BENCH_CONCURRENCY=2 to change the grid; BENCH_PG=shared uses the
# server at BENCH_PG_URL without round-trip counts. `make bench-smoke` (N=100, < 60 s) is what CI runs.
BENCH_N ?= 100,1000
BENCH_CONCURRENCY ?= 1,2
BENCH_PG ?= private

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_stack.py --n $(BENCH_N) --concurrency $(BENCH_CONCURRENCY) --pg $(BENCH_PG) --out docs/benchmarks.json
	$(VENV)/bin/python bench/plot.py docs/benchmarks.json --out docs/benchmarks.png

bench-smoke: $(STAMP)
	$(VENV)/bin/python bench/bench_stack.py --smoke

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
