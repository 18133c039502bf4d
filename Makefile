# Two entry points (see README): `make demo` runs the main job, `make test` the test suite.
# Both set up .venv first: CPU torch from the local wheel, then fastgdr and its extras,
# every pip install under constraints.txt so that pip never swaps in a CUDA torch.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export PIP_CONSTRAINT := $(CURDIR)/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): setup.py constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/model_info.py --presets all --out runs/demo/model_info

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
