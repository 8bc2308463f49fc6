# Two commands set everything up on a fresh clone: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
PIP     := $(BIN)/python -m pip install -q -c constraints.txt

.PHONY: demo demo-imagenet demo-model test bench install clean

$(STAMP): pyproject.toml constraints.txt Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(PIP) -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/convlens demo

# The lecture's visualizations of a real ImageNet network (pretrained, offline): runs/imagenet/report/report.html
demo-imagenet: $(STAMP)
	$(BIN)/convlens demo --imagenet

# Some tests use the trained demo model: train it first when it is missing or unfinished (resumes).
demo-model: $(STAMP)
	@grep -qs '"status": "complete"' runs/demo/run.json || $(BIN)/convlens demo --no-analyses

# --no-skip: a skipped test fails, so every test runs here and in CI.
test: demo-model
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --no-skip

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
