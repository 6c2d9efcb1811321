# Two commands on a fresh machine: `make demo` and `make test`.
# TORCH_SPEC picks the torch build installed before the package: the default is the
# CPU build these machines carry; on a GPU box use e.g. TORCH_SPEC="torch" (CUDA build).
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: demo test lint venv clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test,server,quant]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(VENV)/bin/k5tune demo

test: venv
	$(VENV)/bin/ruff check k5tune tests
	$(PY) -m pytest -q

lint: venv
	$(VENV)/bin/ruff check k5tune tests

clean:
	rm -rf $(VENV) build *.egg-info
