# The two commands of the README: `make run` (the main job) and `make test`.
# Each creates .venv and installs the project into it first, so a fresh machine needs only
# Python 3.11 and make.
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PYTHON  ?= python3
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: run test lint docs install flow serve clean

# venv-bin.pth lets .venv/bin's tools find each other without an activated venv (dvc's stages run
# `nectargan`, mlflow runs `uvicorn`).
$(STAMP): pyproject.toml venv-bin.pth
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	cp venv-bin.pth "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')"
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	dvc repro
	nectargan montage --every 5
	nectargan loss-graphs
	@echo
	@nectargan outputs
	@echo "Compare weights:   .venv/bin/dvc exp run -S train.loss.l1=50 && .venv/bin/dvc exp show"

# The pipeline as one Prefect flow run on the sample data (what the Docker image runs).
flow: $(STAMP)
	nectargan sample-data
	python -m flows

# A local Prefect server on loopback, and the deployments served from this machine.
serve: $(STAMP)
	nectargan sample-data
	prefect server start --host 127.0.0.1 --port 4200 > prefect-server.log 2>&1 & \
	trap 'kill $$!' EXIT INT TERM; \
	PREFECT_API_URL=http://127.0.0.1:4200/api python flows/serve.py --wait 120

lint: $(STAMP)
	ruff check .
	ruff format --check .

# The docs site (docs/, mkdocs.yml) on loopback, rebuilt on every edit.
docs: $(STAMP)
	mkdocs serve --dev-addr 127.0.0.1:8000

# Two workers, each module on one of them (its fixtures are set up once): the suite is mostly
# single-threaded waits on processes and servers, so two share the two cores of a small machine.
test: lint
	python -m pytest -n 2 --dist loadfile

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache prefect-server.log
