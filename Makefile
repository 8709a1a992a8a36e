# Two entry points for a fresh machine: `make demo` (the main job) and `make test`.
# Both create .venv and install the project from its own files first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# constraints.txt pins torch to the CPU wheel: no CUDA download on a CPU machine.
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev,service,ray]'
	@# Fashion-MNIST for the demo and benchmarks (Debian package); digits is the fallback.
	@test -d /usr/share/datasets/fashion-mnist || (command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
		(apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1) || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/featurebank demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

clean-venv:
	rm -rf $(VENV)
