# Two commands: `make demo` and `make test`. Both create .venv on first use.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow lint format bench bench-posteriordb bench-cost bench-native bench-wall bench-accuracy bench-compile clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/find-python.sh
	@test -x $(PY) || { py=$$(./scripts/find-python.sh) && echo "Creating $(VENV) with $$py" && $$py -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

demo: setup
	$(VENV)/bin/vingd compare breast_cancer_logistic --out out/demo

test: setup
	$(PY) -m pytest -q

test-slow: setup
	$(PY) -m pytest -q -m slow

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: setup
	$(PY) benchmarks/run.py

bench-posteriordb: setup
	$(PY) benchmarks/run.py --suite posteriordb

bench-cost: setup
	$(PY) benchmarks/step_cost.py

bench-native: setup
	$(PY) benchmarks/native_families.py

bench-wall: setup
	$(PY) benchmarks/wall.py

bench-accuracy: setup
	$(PY) benchmarks/accuracy.py

bench-compile: setup
	$(PY) benchmarks/compile_floor.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
