# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install the project from its own files first:
#   demo: the core with the torch and service extras (the demo exports EfficientNet-Lite0 on
#         first use, which needs torch; no Ray, pandas or pyarrow);
#   test: adds the dev (with io) and ray extras, and the zoo venv (.venv-zoo: timm, torchvision).
# tools/install.py keeps torch on its CPU build: pip's configured CPU wheel where there is one,
# else PyTorch's CPU wheel index (`python tools/install.py --which-torch` says which).
# `make lint` runs ruff and mypy (as .ci/run does before the tests).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The zoo environment (docs/install.md): a second venv with PyPI's torch build, torchvision and
# timm, featurebank installed editable; the timm/torchvision tests run there.
ZOO_VENV ?= .venv-zoo
ZOO_STAMP := $(ZOO_VENV)/.installed-zoo
DEMO_STAMP := $(VENV)/.installed-demo
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint install install-test which-torch clean-venv zoo test-zoo

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(DEMO_STAMP): pyproject.toml constraints.txt tools/install.py | $(BIN)/python
	$(BIN)/python tools/install.py torch,service
	@# Fashion-MNIST for the demo and benchmarks (Debian package); digits is the fallback.
	@test -d /usr/share/datasets/fashion-mnist || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1) || true
	touch $@

$(TEST_STAMP): $(DEMO_STAMP)
	$(BIN)/python tools/install.py torch,service,dev,ray
	@# cleanlab is AGPL-3.0: never a dependency of featurebank, only installed here so that the
	@# audit's label rule is compared with it side by side (tests/test_audit.py).
	$(BIN)/python -m pip install -q "cleanlab==2.9.0"
	touch $@

install: $(DEMO_STAMP)

install-test: $(TEST_STAMP)

which-torch: | $(BIN)/python
	$(BIN)/python tools/install.py --which-torch

demo: $(DEMO_STAMP)
	$(BIN)/featurebank demo

# The whole suite: the core tests in .venv, then the timm/torchvision tests in the zoo venv
# (where those libraries import; in .venv they skip with that reason).
test: $(TEST_STAMP) $(ZOO_STAMP)
	$(BIN)/python -m pytest -q
	$(ZOO_VENV)/bin/python -m pytest -q -m "timm or torchvision"

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python tools/typecheck.py

clean-venv:
	rm -rf $(VENV) $(ZOO_VENV)

$(ZOO_STAMP): pyproject.toml tools/install_zoo.py
	$(PY) tools/install_zoo.py --venv $(ZOO_VENV)
	touch $@

zoo: $(ZOO_STAMP)

test-zoo: $(ZOO_STAMP)
	$(ZOO_VENV)/bin/python -m pytest -q -m "timm or torchvision"
