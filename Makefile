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
	nectargan train
	@echo
	@echo "Sample data:     data/sample/{train,val,test} (A label map | B facade per file)"
	@echo "Checkpoints:     outputs/train/checkpoints/epoch_NNNN.pt"
	@echo "Example strips:  outputs/train/examples/ (input | generated | target per epoch)"
	@echo "Losses:          outputs/train/epochs.csv (per epoch), outputs/train/loss_log.csv (per iteration)"
	@echo "Settings:        .venv/bin/nectargan settings"

lint: $(STAMP)
	ruff check .
	ruff format --check .

test: lint
	python -m pytest

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
