# Set-up and everyday commands. `make demo` and `make test` work on a fresh machine:
# they create .venv, install the CPU build of torch (pinned: an unpinned torch pulls a
# multi-GB CUDA build) and the project with its dev extras.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed
DEMO_OUT ?= demo_out
# PortAudio for sound output; JACK to test a real audio path without a sound card;
# Chromium to check the feature browser page headless; the libraries and a font Qt needs to
# draw the desktop app (also offscreen, as the GUI tests do).
SYSTEM_PACKAGES := libportaudio2 jackd2 chromium libegl1 libgl1 libfontconfig1 libxkbcommon0 libglib2.0-0 \
	libdbus-1-3 fonts-dejavu-core

.PHONY: install system demo test lint clean gpu-check

install: $(STAMP)

# Debian/Ubuntu packages, installed when missing and we may (root with apt-get); otherwise a note:
# everything but sound output works without them (use --no-audio).
system:
	@missing=""; \
	for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	else \
		echo "note: missing$$missing (sudo apt-get install$$missing): sound output needs PortAudio (--no-audio works without), the GUI needs the Qt libraries"; \
	fi

$(STAMP): pyproject.toml Makefile | system
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,audio,osc,midi,gui,onnx]"
	# basic-pitch for its ONNX transcriber only: its own requirements pin an old TensorFlow and NumPy
	$(BIN)/python -m pip install -q --no-deps "basic-pitch==0.4.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/mgsteer demo --out $(DEMO_OUT)

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# On a machine with an NVIDIA GPU: the `cuda` tests and the GPU benchmarks. GPU_PY is the Python
# that has CUDA torch (e.g. `make gpu-check GPU_PY=python3` where the project is not installed).
GPU_PY ?= $(BIN)/python
gpu-check:
	PYTHONPATH=. $(GPU_PY) -m pytest -q -m cuda -p no:cacheprovider
	PYTHONPATH=. $(GPU_PY) bench/stream.py --device cuda --dtype float16 --model random-small
	PYTHONPATH=. $(GPU_PY) bench/stream.py --device cuda --dtype bfloat16 --model random-small,random-medium,random-large
	PYTHONPATH=. $(GPU_PY) bench/live.py --device cuda --dtype float16 --model random-small --seconds 120
	PYTHONPATH=. $(GPU_PY) bench/harvest.py --model random-small --device cuda --clips 64 --layers 6,12,18 --batch-clips 1,16
	-PYTHONPATH=. $(GPU_PY) bench/sae_train.py --device cuda --d 1024 --expansion 32 --k 100 --steps 300 --against sparsify

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache *.egg-info
