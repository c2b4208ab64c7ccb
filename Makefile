# Every target sets itself up: the virtual environment is created and filled when missing
# (or when pyproject.toml changed). torch/torchvision are pinned to the builds on disk.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint format train-shapes bench bench-quality bench-smart clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(STAMP)  ## the main job on the bundled shapes models, offline, on the CPU
	$(VENV)/bin/winnow run configs/demo.yaml

test: $(STAMP)  ## the whole test suite (CPU, offline)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

train-shapes: $(STAMP)  ## retrain the bundled shapes models (CPU, seeded, ~46 min on 2 free cores)
	$(PY) -m winnow.models.shapes.train

bench: $(STAMP)  ## throughput: notebook loop vs winnow vs bound on the CPU -> bench/results/cpu.json
	$(PY) -m bench.cpu

bench-quality: $(STAMP)  ## curation quality on the shapes world -> bench/results/shapes.json
	$(PY) -m bench.quality

bench-smart: $(STAMP)  ## early pruning curve and adaptive N vs the plain run -> bench/results/smart.json
	$(PY) -m bench.smart

clean:  ## build and run outputs and caches (never a source folder; the venv stays)
	rm -rf out catalog-out build *.egg-info .pytest_cache .ruff_cache .mypy_cache .hypothesis
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -prune -exec rm -rf {} +
