# The README's two commands: `make demo` and `make test`. Both create .venv first if needed.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup golden clean-venv

# The demo needs the CPU stack and the notebook runner only; the tests add the dev extras and
# lm-polygraph (+1.3 GB, for one parity test). A full install satisfies the demo's stamp too.
$(VENV)/.installed-demo: pyproject.toml scripts/setup_venv.sh
	if [ $(VENV)/.installed -nt pyproject.toml ] && [ $(VENV)/.installed -nt scripts/setup_venv.sh ]; then \
	    touch $@; else KK_EXTRAS=cpu,notebooks bash scripts/setup_venv.sh; fi

$(VENV)/.installed: pyproject.toml scripts/setup_venv.sh
	bash scripts/setup_venv.sh

setup: $(VENV)/.installed

demo: $(VENV)/.installed-demo
	$(PY) -m kaggle_kit demo

# Every test on TEST_WORKERS processes (pytest-xdist, a test file per worker at a time, the longest
# first); the golden notebooks, in order, on one of them (tests/conftest.py).
TEST_WORKERS ?= 2
test: $(VENV)/.installed
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadscope

# Rewrite the nbval golden notebooks (tests/golden) after changing a notebook.
golden: $(VENV)/.installed
	$(PY) -m kaggle_kit golden

clean-venv:
	rm -rf $(VENV)
