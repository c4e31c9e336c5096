# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install Debian packages the project needs and the project
# itself, then run. Re-running is quick: each step is skipped when done.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

# Debian packages used by the data engine (speech voices, natural recorded speech from four
# Asterisk voices ~74 MB, music rendering, sox); the group after it is held-out material for
# bench/demo_set.py (~38 MB download, ~80 MB installed).
DEBS := espeak-ng festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k flite \
        fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small \
        fillets-ng-data \
        asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav \
        asterisk-prompt-it-menardi-wav \
        asterisk-core-sounds-en-wav asterisk-prompt-fr-armelle pocketsphinx-testdata \
        festival-czech festvox-czech-machac festvox-italp16k csound-soundfont sox

# pip's notes about this machine's optional local package mirrors are noise.
QUIET := { grep -v -e 'is ignored: it is neither a file nor a directory' -e '^ *$$' || true; }

.PHONY: demo test lint install sysdeps clean

demo: install
	$(BIN)/python -m flows.demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

install: sysdeps $(STAMP)

sysdeps:
	@missing=""; for p in $(DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip 2>&1 | $(QUIET)
	$(BIN)/pip install -q -e '.[dev]' 2>&1 | $(QUIET)
	touch $(STAMP)

clean:
	rm -rf $(VENV) .stemloop .pytest_cache
