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

# The suite on 2 workers, one test file each at a time (module fixtures built once), each worker and its subprocesses
# on one OpenMP thread: half the suite's time is interpreter start-ups of subprocesses (single-threaded), which now
# overlap with the other worker's numeric work instead of leaving a core idle; 2 workers x 2 threads on 2 cores was
# slower than one worker (oversubscription). Bytecode is cached: about a hundred subprocesses import monai_prune.
test: $(STAMP)
	OMP_NUM_THREADS=1 PYTHONDONTWRITEBYTECODE= $(PY) -m pytest -q -ra -n 2 --dist loadfile --durations=20 tests

bench: $(STAMP)
	$(PY) benchmarks/seg3d.py --json bench_output/seg3d.json
	$(PY) benchmarks/cls2d.py --json bench_output/cls2d.json

bundles: $(STAMP)  # synthetic data, dense training and compression of the two bundles in bundles/ (small CPU settings)
	PY=$(abspath $(PY)) bash bundles/build.sh

clean:
	rm -rf $(VENV) demo_output bench_output
