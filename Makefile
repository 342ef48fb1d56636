# One venv in .venv; every target installs what it needs first.
PY       := .venv/bin/python
STAMP    := .venv/.installed
DATA     ?= data/phantom
N        ?= 1000
OUT      ?= runs/demo
PROFILE  ?= quick
BUNDLE   := python -m monai.bundle run
TRAIN_CONFIGS := "['bundle/configs/train.yaml','bundle/configs/profiles/$(PROFILE).yaml']"

.PHONY: setup data demo train infer report test test-all bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	python3.11 -m venv .venv
	$(PY) -m pip install --upgrade --quiet "pip>=24"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

data: $(STAMP)
	$(PY) -m scripts.phantom --out $(DATA) --n $(N) --seed 0

# Everything: phantom data, all five stages (quick CPU profile), evaluation, inference, report.
demo: $(STAMP)
	$(PY) -m scripts.demo --data $(DATA) --n $(N) --out $(OUT) --profile $(PROFILE)

train: $(STAMP)
	.venv/bin/$(BUNDLE) training --config_file $(TRAIN_CONFIGS) --dataset_dir $(DATA) --output_dir $(OUT)

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) -m scripts.bench --out runs/bench

lint: $(STAMP)
	.venv/bin/ruff check bundle tests
	.venv/bin/ruff format --check bundle tests

clean:
	rm -rf runs .pytest_cache .ruff_cache
