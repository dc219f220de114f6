# The two commands a newcomer needs: `make demo` and `make test`.
# Both create .venv on first use and install what they need into it.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: test e2e demo bench cleanup-bench lint clean sdk

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -e '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

# Only the browser and demo tests (they are part of `make test` too).
e2e: $(STAMP) sdk
	$(PY) -m pytest tests/test_browser.py tests/test_demo.py

demo: $(STAMP) sdk
	$(PY) -m demo

sdk:
	bash demo/frontend/build.sh

# Benchmarks of issue 4 (not part of `make test`): `make bench BENCH_ARGS=--quick` to smoke-check.
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

# Cleanup at scale (issue 5): 1M expired + 100k live sessions, three processes
# cleaning at once; prints batches, duration and the longest IOLoop stall, and
# writes them to test-artifacts/cleanup_scale.json (the test asserts no duration).
cleanup-bench: $(STAMP)
	RUN_SLOW=1 $(PY) -m pytest -m slow tests/test_cleanup_scale.py -q -s

lint: $(STAMP)
	$(VENV)/bin/ruff check tornado_supertokens tests demo bench
	$(VENV)/bin/mypy tornado_supertokens

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
