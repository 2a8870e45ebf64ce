# The two commands of the README: `make run` (the main job) and `make test`.
# Each creates .venv and installs the project into it first, so a fresh machine needs only
# Python 3.11 and make.
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PYTHON  ?= python3
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	dvc repro
	@echo
	@echo "Sample data:      data/sample/{train,val,test} (A label map | B facade per file)"
	@echo "Validation:       outputs/validation/validation.csv (empty when every rule passed)"
	@echo "Checkpoints:      outputs/train/checkpoints/epoch_NNNN.pt"
	@echo "Example strips:   outputs/train/examples/ (per epoch), outputs/examples/ (final)"
	@echo "Losses:           outputs/train/epochs.csv, outputs/train/loss_log.csv (dvc plots show)"
	@echo "Evaluation:       outputs/eval/per_image.csv, outputs/eval/metrics.json (dvc metrics show)"
	@echo "MLflow UI:        .venv/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlflow.db"
	@echo "Compare weights:  .venv/bin/dvc exp run -S train.loss.l1=50 && .venv/bin/dvc exp show"

lint: $(STAMP)
	ruff check .
	ruff format --check .

test: lint
	python -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
