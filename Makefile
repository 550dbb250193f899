# The README's quick start: `make train` and `make test`. Both set up .venv first.
PY := .venv/bin/python
# torch/torchvision come from this machine's local wheel store (pip's find-links);
# pip installs the pinned versions listed in pyproject.toml.
SETUP_STAMP := .venv/.segattn-installed

.PHONY: setup train test data clean

setup: $(SETUP_STAMP)

$(SETUP_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(SETUP_STAMP)

data: setup
	$(PY) -m segattn.data.synthetic

train: setup
	$(PY) train.py

# Two worker processes, one per core of the 2-core machines the suite is sized for (pytest-xdist);
# `.venv/bin/python -m pytest` alone runs it in one process.
test: setup
	$(PY) -m pytest -q -n 2

clean:
	rm -rf outputs multirun data/mini_cityscapes
