# The two commands of the README: `make demo` and `make test`. Both set up the machine first if needed.
VENV := .venv
STAMP := $(VENV)/.wmsynth-installed
PY := $(VENV)/bin/python

.PHONY: setup demo test bench clean-runs

$(STAMP): uv.lock pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh
	touch $(STAMP)

setup: $(STAMP)

# Generate tabletop episodes in the embedded simulator and write LeRobot RGB-D shards (runs/demo).
demo: $(STAMP)
	$(VENV)/bin/wmsynth run stages.yaml
	$(VENV)/bin/wmsynth verify runs/demo

# The test suite (CI runs this through .ci/run).
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/foundation.py
	$(PY) benchmarks/spatial_qa.py

clean-runs:
	rm -rf runs
