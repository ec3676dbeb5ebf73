# Two commands a newcomer needs: `make demo` and `make test`. Each creates .venv on its own.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv benchmarks screenshots clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first, pinned: the local CPU build. An unpinned torch pulls gigabytes of CUDA packages.
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# nothing installed after it (transformers, logger packages) may have replaced the pinned CPU torch
	$(BIN)/python -c "import torch, sys; sys.exit(0 if torch.__version__.split('+')[0] == '2.13.0' else 'torch changed to ' + torch.__version__)"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/nn-neuroimaging demo $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

benchmarks: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# PNGs of the TensorBoard panels into $(SHOTS) (default docs/; headless Chromium, Debian package): the
# 8-epoch demo run, and for the events panel a run that diverges (examples/early_stopping_on_anomaly.py);
# plus the demo run's self-contained HTML report in build/screens/report.html.
SHOTS ?= docs
screenshots: $(STAMP)
	test -x /usr/bin/chromium || (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium)
	rm -rf build/screens && mkdir -p build
	$(BIN)/nn-neuroimaging demo --log-dir build/screens --no-progress-bar > build/screens.log 2>&1 || (cat build/screens.log; exit 1)
	$(BIN)/python examples/early_stopping_on_anomaly.py --tensorboard --log-dir build/screens --control-lr 0
	$(BIN)/nn-neuroimaging report build/screens/demo/version_0 --html build/screens/report.html
	$(BIN)/python scripts/screenshots.py --log-dir build/screens/demo --out-dir $(SHOTS) $(ARGS)
	$(BIN)/python scripts/screenshots.py --log-dir build/screens/diverging --out-dir $(SHOTS) --only events.png $(ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info
