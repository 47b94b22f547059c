# The README's two commands: `make demo` and `make test`. Both create .venv first if needed.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test setup golden clean-venv

$(VENV)/.installed: pyproject.toml scripts/setup_venv.sh
	bash scripts/setup_venv.sh

setup: $(VENV)/.installed

demo: $(VENV)/.installed
	$(PY) -m kaggle_kit demo

test: $(VENV)/.installed
	$(PY) -m pytest

# Rewrite the nbval golden notebooks (tests/golden) after changing a notebook.
golden: $(VENV)/.installed
	$(PY) -m kaggle_kit golden

clean-venv:
	rm -rf $(VENV)
