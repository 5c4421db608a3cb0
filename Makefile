# Two commands: `make demo` (one simulated session on the embedded default) and `make test`.
# Both create .venv with Python 3.12 on first use.

PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /root/.pyenv/versions/3.12*/bin/python3.12 /usr/local/bin/python3.12 /usr/bin/python3.12; do \
	"$$p" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { echo "$$p"; break; }; done)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean bench lock

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

bench: $(STAMP)
	$(VENV)/bin/python bench/bench_monitor_cycle.py

clean:
	rm -rf $(VENV) var .pytest_cache .hypothesis
