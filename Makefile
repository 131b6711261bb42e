# Two commands for a newcomer: `make demo` and `make test`. Each creates .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-heavy bench venv clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, pinned: the CPU build that lies on local disk (a plain `torch` would pull a CUDA build).
	$(BIN)/pip install -q torch==2.13.0
	# nnU-Net v2 without its declared-but-unused timm/torchvision chain (see pyproject.toml).
	$(BIN)/pip install -q --no-deps nnunetv2==2.8.1 dynamic-network-architectures==0.4.4
	$(BIN)/pip install -q -e ".[test]"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/segxai demo --out demo-output

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-heavy: $(STAMP)
	$(BIN)/python -m pytest -q -m heavy

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_contrast_shapley.py
	$(BIN)/python benchmarks/bench_region_shap.py
	$(BIN)/python benchmarks/bench_tracin.py
	$(BIN)/python benchmarks/bench_cohort.py
	$(BIN)/python benchmarks/bench_time_to_accuracy.py
	$(BIN)/python benchmarks/bench_first_map.py
	$(BIN)/python benchmarks/bench_forward_pass.py

clean:
	rm -rf $(VENV) demo-output
