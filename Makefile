VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip install --quiet --disable-pip-version-check -c requirements/constraints.txt

.PHONY: demo test lint bench peer peer-suite clean

$(STAMP): pyproject.toml requirements/constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test,plots,lint]"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m laplacetorch demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check laplacetorch tests benchmarks examples
	$(PY) -m ruff format --check laplacetorch tests benchmarks examples

bench: $(STAMP)
	$(PY) benchmarks/bench_fit.py

# Optional peers for the comparison tests and benchmarks (never runtime dependencies):
# laplace-torch, and curvlinops (benchmarks/bench_curvlinops.py).
peer: $(STAMP)
	$(PIP) laplace-torch==0.3 curvlinops-for-pytorch==3.0.1
	$(PY) -m pip uninstall -y -q torchvision

# laplace-torch's own test suite on laplace-torch and on laplacetorch.compat (`laplace` an
# alias of it, names only): make peer-suite LAPLACE_TESTS=<a checkout of aleximmer/Laplace>
peer-suite: peer
	@test -n "$(LAPLACE_TESTS)" || (echo "set LAPLACE_TESTS to a checkout of aleximmer/Laplace" && exit 2)
	$(PIP) pytest-mock
	$(PY) benchmarks/peer_suite/run.py $(LAPLACE_TESTS)

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
