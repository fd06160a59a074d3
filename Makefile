# certroll — common commands. `make demo` and `make test` are the two set-up commands.
VENV ?= .venv
PY := $(VENV)/bin/python
export CERTROLL_HOME ?= $(CURDIR)/.certroll

.PHONY: install test demo soak bench azurite azurite-stop lint typecheck serve clean mutation

install: $(VENV)/.installed node_modules/.installed .certroll/.softhsm .certroll/.chromium

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e .
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

.certroll/.softhsm:
	@mkdir -p .certroll
	@if ! ls /usr/lib/softhsm/libsofthsm2.so /usr/lib/*/softhsm/libsofthsm2.so >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; \
	  else echo "softhsm2 is missing: install the Debian package softhsm2 (tests that need it are skipped)"; fi; \
	fi
	@touch $@

# headless Chromium (Debian's package) renders the fleet report in a test
.certroll/.chromium:
	@mkdir -p .certroll
	@if ! [ -x /usr/bin/chromium ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "chromium is missing: install the Debian package chromium (the report rendering test is skipped)"; fi; \
	fi
	@touch $@

test: install
	scripts/test.sh

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy

demo: install
	scripts/azurite.sh start
	$(VENV)/bin/certroll demo --devices $${DEVICES:-1000}

# faults at scale (docs/reliability.md, "Soak"); starts and restarts its own Azurite
soak: install
	$(VENV)/bin/certroll soak --devices $${DEVICES:-1000} --seed $${SEED:-7}

# mutmut over the PKI, parsing and rotation modules (see docs/reliability.md); CPU-heavy
mutation: install
	scripts/mutation.sh

bench: install
	scripts/azurite.sh start
	$(PY) -m bench

serve: install
	scripts/azurite.sh start
	$(VENV)/bin/certroll serve

azurite: install
	scripts/azurite.sh start

azurite-stop:
	scripts/azurite.sh stop

clean:
	scripts/azurite.sh stop || true
	rm -rf .certroll .pytest_cache .mypy_cache .ruff_cache .coverage mutants .hypothesis
