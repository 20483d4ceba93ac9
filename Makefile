# make demo : create .venv if missing, install bayesnlme, fit pk_1cmt_oral to the bundled
#             theophylline data, run diagnostics and write demo_output/{fit.nc,summary.csv,
#             diagnostics/,report.html}
# make case-studies : run every notebook in case_studies/ with full settings; HTML copies in case_studies/html/
# make docs : API reference from the numpydoc docstrings into docs/_build/ (pdoc)
# make test : create .venv if missing, install, run the test suite (without the validation runs)
# make validate : the statistical validation runs (covariate search, mixture recovery, trial PoS, SBC,
#                 one capability cell, ODE compile-once check, the ETA parameterisations' posteriors
#                 with an OMEGA block, bounded priors and covariate regressions, allometry/IOV recovery
#                 and its diagnose run, posteriordb ODE, TDM against a NUTS refit, init="map" on sparse
#                 data; ~9 min on 2 cores)
# make fuzz : 10,000 random cases per fuzz target (data reader, spec parser, regimen files); docs/reliability.md
# make capabilities : every model_library entry through fit, diagnose, -2LL, subject LOO, VPC and
#                      regimens (~70 min on 2 cores); writes docs/capabilities.md
# make benchmark / benchmark-scale / benchmark-gpu : theophylline against a hand-written model;
#                 simulated populations (100 and 1,200 subjects) on nutpie, numpyro and blackjax;
#                 10,000 and 100,000 subjects on a GPU.  Figures in docs/benchmarks.md
# make benchmark-ode-jax : an ODE model under numpyro with the JAX integrator against the host's numba one
# make sbc-check : simulation-based calibration of pk_1cmt_oral, 100 replicates on Dask (~2 min); sbc_check/
# make benchmark-many : 8 fits serially against a 2-worker LocalCluster (benchmarks/many_fits.py)
# make benchmark-evaluate : the phases of `bayesnlme diagnose` on a theophylline fit, timed (benchmarks/evaluate.py)
# make qualify : reference problems against published answers (nlme, NONMEM, posteriordb, R loo, BLQ);
#                writes qualification/qualification.{csv,md} (1-4 min; not part of make test)
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test validate install benchmark benchmark-scale benchmark-gpu benchmark-ode-jax benchmark-many benchmark-evaluate sbc-check clean case-studies case-studies-check docs fuzz qualify capabilities

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
	$(BIN)/bayesnlme diagnose demo_output
	$(BIN)/bayesnlme report demo_output --out demo_output/report.html

# the suite runs in TEST_WORKERS processes, one test file per process (module-scoped fits are made once),
# longest file first (tests/conftest.py, from tests/file_durations.json; xdist's own reordering off)
TEST_WORKERS ?= 2
# On an empty cache (a fresh clone, CI) the suite compiles ~750 C modules and ~700 numba functions (with the
# file order above: 49.5 -> 38-43 CPU-minutes, docs/benchmarks.md).  It compiles them at optimisation level 1
# (gcc -O1, NUMBA_OPT=1: the same IEEE arithmetic, no fast-math; -O0 runs too slowly) into a cache of its
# own, .test_cache/, so that a user's cache (~/.pytensor) never holds code compiled at that level: numba's
# cache key does not record it.
# Tests that check the user's cache (tests/test_reproducible.py) run their subprocesses without these.
TEST_CACHE := $(CURDIR)/.test_cache
TEST_ENV = NUMBA_OPT=1 NUMBA_CACHE_DIR=$(TEST_CACHE)/numba \
	PYTENSOR_FLAGS="base_compiledir=$(TEST_CACHE)/pytensor,gcc__cxxflags=-O1$${PYTENSOR_FLAGS:+,$$PYTENSOR_FLAGS}"

test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	    -m "not validation"

# the statistical validation runs left out of make test (one to three minutes each; ~10 CPU-minutes in all)
validate: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder \
	    -m validation

fuzz: $(STAMP)
	BAYESNLME_FUZZ_EXAMPLES=10000 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_fuzz.py \
	    --hypothesis-show-statistics

capabilities: $(STAMP)
	$(BIN)/python tests/capability_matrix.py --out docs/capabilities.md

qualify: $(STAMP)
	$(BIN)/python -m bayesnlme.cli.qualify --out qualification

# every notebook with the test suite's short settings, the warfarin study's joint ODE fits and the covariate
# search study included (~12 min)
case-studies-check: $(STAMP)
	BAYESNLME_ALL_CASE_STUDIES=1 $(BIN)/python -m pytest -q tests/test_case_studies.py

case-studies: $(STAMP)
	$(BIN)/python case_studies/run_all.py case_studies/html

docs: $(STAMP)
	PDOC_ALLOW_EXEC=1 $(BIN)/pdoc --docformat numpy --no-show-source --output-directory docs/_build \
	    bayesnlme bayesnlme.structural bayesnlme.report \
	    $$(ls bayesnlme/*.py | grep -v __init__ | sed 's|/|.|; s|\.py$$||')
	@echo "API reference: docs/_build/index.html"

benchmark: $(STAMP)
	$(BIN)/python benchmarks/theophylline.py

benchmark-many: $(STAMP)
	$(BIN)/python benchmarks/many_fits.py

benchmark-evaluate: $(STAMP)
	$(BIN)/python benchmarks/evaluate.py

# SBC of pk_1cmt_oral at 100 replicates on the theophylline design (~2 min on 2 cores); writes sbc_check/
sbc-check: $(STAMP)
	$(BIN)/bayesnlme sbc pk_1cmt_oral --data $$($(BIN)/python -c "from bayesnlme.datasets import dataset_path; \
	    print(dataset_path('theophylline'))") --n 100 --out sbc_check --chains 2 --draws 300 --tune 300 --ranks 50

benchmark-scale: $(STAMP)
	$(BIN)/python benchmarks/scale.py --json benchmarks/scale_cpu.json

# on a machine with an NVIDIA GPU: JAX's CUDA build, then 10,000 and 100,000 subjects (about 8 min)
benchmark-gpu: $(STAMP)
	$(BIN)/python -m pip install --quiet "jax[cuda12]"
	$(BIN)/python benchmarks/scale.py --device gpu --sizes 10000 100000 --engines numpyro --phases cold \
	    --json benchmarks/scale_gpu.json

# ODE models under JAX: the integrator in JAX against the numba one on the host (CPU; --device gpu on a GPU)
benchmark-ode-jax: $(STAMP)
	$(BIN)/python benchmarks/ode_jax.py --replicate 1 10 --json benchmarks/ode_jax_cpu.json

clean:
	rm -rf demo_output .pytest_cache .test_cache case_studies/html docs/_build qualification
