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

test: setup
	$(PY) -m pytest -q

clean:
	rm -rf outputs multirun data/mini_cityscapes
