# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make demo   - create .venv if missing, install, run the demo on builtin:tiny
#   make test   - create .venv if missing, install, run the test suite
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-all test-fast lint install clean browser

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH (or make PYTHON=python3)"; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# spandrel (upscalers) without its torchvision requirement: PyPI's torchvision does not load
	# beside the CPU torch build, and sdfleet imports spandrel without it (batch/upscale.py)
	$(BIN)/python -m pip install -q -c constraints.txt --no-deps spandrel
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sdfleet demo --out out/demo

# Default suite: fast tests plus the ray/slow tests the issues' acceptance relies on.
test: $(STAMP) lint browser
	$(BIN)/python -m pytest -m "not gpu" -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q

LINTED := batch anim jobs tests benchmarks manifests

lint: $(STAMP)
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)

clean:
	rm -rf $(VENV) out .pytest_cache

# The report's browser test drives Debian's headless chromium through its chromedriver: installed
# once, quietly, when missing (apt-get as root, as on CI; elsewhere: sudo make browser).
browser:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
	  echo "installing chromium and chromium-driver (Debian packages) for the report's browser test"; \
	  apt-get update -qq >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }
