# Two commands on a fresh machine: `make demo` and `make test`. Both (re)build .venv with the CPU torch pinned.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test bench venv clean bundles

# `import holoscan` once: holoscan's wheel (MONAI Deploy) finishes installing on the first interpreter start
# (wheel-axle-runtime, through pip internals that import the stdlib distutils); done here, not in the first test
# process, where it breaks the setuptools import that nncf.torch (QAT) needs.
$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints-cpu.txt "torch==2.13.0"
	$(PY) -m pip install --quiet -c constraints-cpu.txt -e ".[openvino,bundle,deploy,dev]"
	$(PY) -c "import holoscan"
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/monai-prune demo --out demo_output

test: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -ra --durations=20 tests  # bytecode cached: ~100 subprocesses import us

bench: $(STAMP)
	$(PY) benchmarks/seg3d.py --json bench_output/seg3d.json
	$(PY) benchmarks/cls2d.py --json bench_output/cls2d.json

bundles: $(STAMP)  # synthetic data, dense training and compression of the two bundles in bundles/ (small CPU settings)
	PY=$(abspath $(PY)) bash bundles/build.sh

clean:
	rm -rf $(VENV) demo_output bench_output
