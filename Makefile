# clipsteer: `make demo` runs the main job, `make test` runs the tests. Both set everything up first.
# INSTALLER=pip uses plain pip instead of uv; CONSTRAINTS= (empty) installs without the CPU pins (GPU machines).
# Bytecode is compiled at install: this machine sets PYTHONDONTWRITEBYTECODE, and every job is a new process.
VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLER ?= uv
CONSTRAINTS ?= constraints-cpu.txt
# Tests run on both cores (pytest-xdist); a test file stays on one worker, so its module fixtures run once.
PYTEST_ARGS ?= -q -n 2 --dist loadfile
FIND_LINKS := $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),)
CONSTRAINT_ARGS := $(if $(CONSTRAINTS),-c $(CONSTRAINTS),)

.PHONY: demo test env data browser

# The demo trains into results/local/demo (not committed); results/demo is the committed copy to compare with.
# Maintainers regenerate the committed copy with `make demo DEMO_RESULTS=results/demo`.
DEMO_RESULTS ?= results/local/demo

demo: env data
	$(VENV)/bin/clipsteer run grids/demo.yaml --results $(DEMO_RESULTS)

test: env data browser
	$(PY) -m pytest $(PYTEST_ARGS)

env: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints-cpu.txt
	python3 -m venv $(VENV)
ifeq ($(INSTALLER),uv)
	$(PY) -m pip install -q uv
	$(VENV)/bin/uv pip install -q --compile-bytecode --python $(PY) $(FIND_LINKS) $(CONSTRAINT_ARGS) -e '.[test]'
else
	$(PY) -m pip install -q $(CONSTRAINT_ARGS) -e '.[test]'
endif
	touch $@

# Fashion-MNIST comes from Debian's dataset-fashion-mnist package (MIT); installed once, needs root.
data:
	@if ! dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "installing Debian package dataset-fashion-mnist"; \
		$$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# Headless Chromium (Debian package chromium) drives tests/test_html_browser.py; installed once where apt is
# available (root or sudo), else that test skips.
browser:
	@if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		echo "installing Debian package chromium"; \
		($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq chromium >/dev/null) || \
			echo "could not install chromium: tests/test_html_browser.py will skip"; \
	fi
