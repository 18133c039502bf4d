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

GL_PACKAGES := libegl1 libegl-mesa0 libgl1-mesa-dri

setup: $(STAMP)

# Headless OpenGL (Mesa EGL) for the renderer; installed with apt-get when missing.
$(STAMP): setup.py constraints.txt
	@dpkg -s $(GL_PACKAGES) >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(GL_PACKAGES); \
	  else echo "please install: sudo apt-get install $(GL_PACKAGES)"; exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[all]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) tools/demo.py --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) runs
