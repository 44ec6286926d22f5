# genspace: the two commands of the README.
#   make demo  — set up .venv, train a flow/diffusion model on a built-in 2-D toy (~1 min CPU),
#                write sample figures and metrics to runs/demo
#   make test  — set up .venv and pass the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test bench install clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(BIN)/pip install -q -c constraints.txt "torch==2.13.0"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev,text]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/genspace demo --out runs/demo

test: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 -p no:cacheprovider --durations=15

bench: $(STAMP)
	bash scripts/install-bench.sh $(BIN)/pip
	$(BIN)/python benchmarks/bench_samplers.py

clean:
	rm -rf $(VENV) runs .pytest_cache
