# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install Debian packages the project needs and the project
# itself, then run. Re-running is quick: each step is skipped when done.
# Python packages come from requirements.lock (every package pinned with its hashes, for
# Linux x86_64 and CPython 3.11), never from a fresh resolve; `make lock` refreshes it.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCK   := requirements.lock
UV     := $(BIN)/uv
# What the lock is resolved for: the platform the project runs on.
LOCK_TARGET := --python-version 3.11 --python-platform x86_64-manylinux_2_36 \
               --index-url https://pypi.org/simple

# Debian packages used by the data engine (speech voices, natural recorded speech from four
# Asterisk voices ~74 MB, music rendering, sox); the group after it is held-out material for
# bench/demo_set.py (~38 MB download, ~80 MB installed), then the development set's real
# recorded music and Czech/Dutch voice acting (~145 MB download), then the library's own
# recorded music (flare-game, hedgewars-data: ~166 MB download, library recipe 3);
# postgresql: the deployment test starts a private server of its own (tests/postgres.py);
# chromium, chromium-driver: the review page's browser test (tests/test_review_browser.py).
DEBS := espeak-ng festival festvox-us-slt-hts festvox-kallpc16k festvox-kdlpc16k flite \
        fluidsynth fluid-soundfont-gm timgm6mb-soundfont musescore-general-soundfont-small \
        fillets-ng-data \
        asterisk-core-sounds-fr-wav asterisk-core-sounds-it-wav asterisk-core-sounds-ru-wav \
        asterisk-prompt-it-menardi-wav \
        asterisk-core-sounds-en-wav asterisk-prompt-fr-armelle pocketsphinx-testdata \
        festival-czech festvox-czech-machac festvox-italp16k csound-soundfont sox \
        warzone2100-music frozen-bubble-data fillets-ng-data-cs fillets-ng-data-nl \
        flare-game hedgewars-data \
        tuxpaint-stamps-default \
        postgresql chromium chromium-driver

# pip's notes about this machine's optional local package mirrors are noise.
QUIET := { grep -v -e 'is ignored: it is neither a file nor a directory' -e '^ *$$' || true; }

.PHONY: demo test lint install sysdeps lock lock-upgrade clean

demo: install
	$(BIN)/python -m stemloop.flows.demo

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

# uv, pinned and hashed in the lock, is bootstrapped with pip; `uv pip sync` then makes the
# venv exactly the lock (installing what is missing, removing what the lock does not name);
# the project goes in editable, built against the lock's setuptools. Bytecode is compiled at
# install (uv does not by default): without it every command compiled its imports from source
# wherever Python may not write them (PYTHONDONTWRITEBYTECODE, a read-only install), 5 s of a
# `stemloop separate` (bench/RESULTS.md, issue 22). The last step imports
# the native pieces and compares the venv with the lock: one line and a non-zero exit if not.
$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(MAKE) --no-print-directory $(UV)
	$(UV) pip sync -q --python $(BIN)/python --require-hashes --compile-bytecode $(LOCK)
	$(UV) pip install -q --python $(BIN)/python --no-deps --no-build-isolation -e .
	$(BIN)/python -m compileall -q -j 0 stemloop adapt datasets flows tasks
	$(BIN)/python -m stemloop.flows.envcheck
	touch $(STAMP)

$(UV): $(LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	awk '/^uv==/{p=1; print; next} p && /^ +--hash/{print; next} p{exit}' $(LOCK) > $(VENV)/uv.txt
	$(BIN)/pip install -q --require-hashes --no-deps -r $(VENV)/uv.txt 2>&1 | $(QUIET)
	touch $(UV)

# Refresh the lock on purpose: after changing pyproject.toml's dependencies or
# requirements-tools.in (`make lock` keeps every pin that still fits and adds what is new),
# or to take newer releases (`make lock-upgrade`). Then run `make test` and commit both files.
lock: $(UV)
	$(UV) pip compile -q pyproject.toml requirements-tools.in --all-extras --generate-hashes \
	  $(LOCK_TARGET) --custom-compile-command "make lock" -o $(LOCK)

lock-upgrade: $(UV)
	$(UV) pip compile -q pyproject.toml requirements-tools.in --all-extras --generate-hashes \
	  $(LOCK_TARGET) --custom-compile-command "make lock" --upgrade -o $(LOCK)

clean:
	rm -rf $(VENV) .stemloop .pytest_cache
