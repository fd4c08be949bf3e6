# The two commands a fresh machine needs: `make demo` (the main job end to end on the embedded
# default: generated demo data + the packaged MiniLM) and `make test` (the test suite).
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
DEMO := runs/demo

.PHONY: venv demo test test-fast docs bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	# torch first, pinned to the release served locally; the project itself declares torch>=2.3
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,tune,test,postgres,notebook,ray,multilingual,mlflow,tensorboard,wandb,dashboard,docs]"
	touch $@

demo: venv
	$(VENV)/bin/kfold run --workdir $(DEMO) --variants split,share --folds 3 --epochs 5 --lr 2e-4 --batch-size 16
	$(VENV)/bin/kfold report --workdir $(DEMO)
	$(VENV)/bin/ensemble blend --workdir $(DEMO) --method soft --format pstage2 --out $(DEMO)/submission.csv --force
	$(VENV)/bin/ensemble check $(DEMO)/submission.csv --format pstage2 --test $(DEMO)/demo-data/test_gold.tsv

# the reference site from docs/ (its generated pages first: settings from --help, results tables from JSON)
docs: venv
	$(PY) docs/generate.py
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict -d site

# lint-imports: the layer contract in pyproject.toml (arrows only point down; only public names cross packages)
test: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q --durations=25

test-fast: venv
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
