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
# draw the desktop app (also offscreen, as the GUI tests do); what Qt's xcb plugin loads to
# open a window on a real X display (`ldd` of libqxcb.so; libxcb-cursor0 is loaded at start),
# and Xvfb, a real X server for the test that opens one.
SYSTEM_PACKAGES := libportaudio2 jackd2 chromium libegl1 libgl1 libfontconfig1 libxkbcommon0 libglib2.0-0 \
	libdbus-1-3 fonts-dejavu-core libxcb-cursor0 libxcb-icccm4 libxcb-keysyms1 libxcb-image0 \
	libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 xvfb xauth

.PHONY: install system demo test test-min lint clean gpu-check gpu-wheels docs-images

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

# docs/gui.png and docs/browser.png, drawn from the world demo (made first if it is not there):
# the window opened on the demo's own preset, and the feature browser page in headless Chromium.
CHROMIUM_FLAGS := --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --disable-quic \
	--disable-background-networking --disable-component-update --disable-sync --window-size=1280,860
docs-images: $(STAMP)
	test -f $(DEMO_OUT)/preset.json || $(MAKE) demo
	QT_QPA_PLATFORM=offscreen $(BIN)/mgsteer gui --preset $(DEMO_OUT)/preset.json --no-audio --seconds 4 \
		--screenshot docs/gui.png
	$(BIN)/mgsteer browse --sae $(DEMO_OUT)/sae --out $(DEMO_OUT)/features.html
	profile=$$(mktemp -d) && chromium $(CHROMIUM_FLAGS) --user-data-dir=$$profile \
		--screenshot=$(CURDIR)/docs/browser.png file://$(abspath $(DEMO_OUT))/features.html 2>/dev/null; \
		rm -rf $$profile

lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# The engine's core tests a second time on the oldest transformers pyproject.toml admits
# (engine.model.MIN_TRANSFORMERS), in a venv of their own; CI runs it after `make test`.
MIN_VENV ?= .venv-min
MIN_TRANSFORMERS ?= transformers==5.17.0
CORE_TESTS := tests/test_static_step.py tests/test_tokenloop.py tests/test_hooks_steering.py tests/test_host.py \
	tests/test_model.py tests/test_codec_stream.py
$(MIN_VENV)/.installed: pyproject.toml Makefile
	test -x $(MIN_VENV)/bin/python || $(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(MIN_VENV)/bin/python -m pip install -q -e . "$(MIN_TRANSFORMERS)" pytest scipy
	touch $@

test-min: $(MIN_VENV)/.installed
	$(MIN_VENV)/bin/python -c "import transformers; print('core tests on transformers', transformers.__version__)"
	$(MIN_VENV)/bin/python -m pytest -q -p no:cacheprovider $(CORE_TESTS)

# A lent GPU machine runs its own python3 (torch, transformers, no soundfile, no network):
# `make gpu-wheels` here fetches what the check needs that such an image lacks, as wheels for
# Python 3.12 on x86-64, into .gpu-wheels/; `make gpu-check` (there: `python3 bench/gpu_check.py
# --out DIR`, with .gpu-wheels carried along) installs them into a temporary folder and runs the
# `cuda` tests and the GPU benchmarks in stages, each with its own time limit, into one JSON.
GPU_PY ?= python3
GPU_CHECK_OUT ?= gpu-check-out
GPU_WHEELS := soundfile==0.14.0 cffi==2.1.1 pycparser==3.12 eai-sparsify==1.3.3 natsort==8.4.0 \
	schedulefree==1.4.1 simple-parsing==0.1.9 docstring-parser==0.18.0
gpu-wheels: $(STAMP)
	rm -rf .gpu-wheels
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d .gpu-wheels $(GPU_WHEELS)
	@ls .gpu-wheels

gpu-check:
	$(GPU_PY) bench/gpu_check.py --out $(GPU_CHECK_OUT)

clean:
	rm -rf $(VENV) $(MIN_VENV) $(DEMO_OUT) .pytest_cache .ruff_cache *.egg-info .gpu-wheels $(GPU_CHECK_OUT)
