# make demo : create .venv if missing, install bayesnlme, fit pk_1cmt_oral to the bundled
#             theophylline data and write demo_output/{fit.nc,summary.csv}
# make test : create .venv if missing, install, run the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install benchmark clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/bayesnlme fit --model pk_1cmt_oral \
	    --data $$($(BIN)/python -c "from bayesnlme.datasets import dataset_path; print(dataset_path('theophylline'))") \
	    --out demo_output --chains 4 --draws 1000 --tune 1000 --seed 1 --no-progress

test: $(STAMP)
	$(BIN)/python -m pytest -q

benchmark: $(STAMP)
	$(BIN)/python benchmarks/theophylline.py

clean:
	rm -rf demo_output .pytest_cache
