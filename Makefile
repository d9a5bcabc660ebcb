# The two commands in the README: `make demo` (whole pipeline on the built-in demo corpus) and `make test`.
# Both create the virtual environment from the lock file on first use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DVC_NO_ANALYTICS := 1
export MLFLOW_DISABLE_TELEMETRY := true
export GX_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1
# uv ignores pip's config: point it at the local CPU torch wheel where the machine has one.
ifneq ($(wildcard /opt/wheels),)
export UV_FIND_LINKS ?= /opt/wheels
endif

.PHONY: venv demo test lint bench clean
venv: $(VENV)/.installed

# uv through the host's `python3 -m`, so a fresh pip install needs no PATH or shim refresh.
UV := python3 -m uv
# Commands run with the venv first on PATH: DVC stages call `python`, tests call `dvc`/`mlflow`/`prefect`.
IN_VENV := env PATH="$(CURDIR)/$(VENV)/bin:$$PATH"

$(VENV)/.installed: requirements/lock.txt pyproject.toml
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	test -x $(PY) || $(UV) venv --quiet --python python3 $(VENV)
	$(UV) pip install --quiet --python $(PY) -r requirements/lock.txt
	$(UV) pip install --quiet --python $(PY) --no-deps -e .
	touch $@

demo: venv
	$(IN_VENV) $(PY) -m flows.pipeline

# The Slurm tests' Debian packages: installed when root and missing; otherwise those tests skip, naming the script.
test: venv
	@bash infra/local/system-packages.sh
	$(IN_VENV) $(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check .
	$(IN_VENV) $(PY) -m pytest -q -p no:cacheprovider tests/unit/test_layers.py  # the import contract

bench: venv
	$(IN_VENV) $(PY) benchmarks/curate_throughput.py
	$(IN_VENV) $(PY) benchmarks/tokenize_throughput.py
	$(IN_VENV) $(PY) benchmarks/mllm_engine.py --shapes demo

clean:
	rm -rf data/curated data/tokens data/.work models/teacher models/tokenizer models/mllm metrics plots mlflow.db mlruns \
	  mlartifacts .prefect logs
