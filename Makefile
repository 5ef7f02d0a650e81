# Set-up is two commands: `make demo` and `make test` (both install on first use).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned to the newest release this project supports; pip takes it from its cache when there is one
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test test-slow test-walk bench lint docs docs-serve docs-reference clean

install: $(STAMP)

# with the docs tools and the optional integrations (timm models, Optuna search, MLflow, ONNX export, TensorBoard, the SLURM
# launcher), so that `make test` (and CI) tests them
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	# the search extra was hydra-optuna-sweeper (Optuna 2.10), whose hydra/sweeper=optuna would shadow ours
	$(PY) -m pip uninstall -q -y hydra-optuna-sweeper
	$(PY) -m pip install -q -e '.[test,docs,timm,search,mlflow,export,tensorboard,slurm]' $(TORCH)
	touch $(STAMP)

# the whole pipeline on scikit-learn's digits: pretrain, sparse-train, prune to 2x, fine-tune, eval
demo: install
	$(VENV)/bin/prune-run model=resnet20 dataset=digits method=group_norm schedule=demo prune.speed_up=2 run_dir=outputs/demo

# the tests are single-threaded (tests/conftest.py): one worker process per core, a file per worker
PYTEST := $(VENV)/bin/pytest -q -n 2 --dist loadfile

test: install
	$(PYTEST)

# longer end-to-end tests and every CIFAR model x method (tens of minutes on 2 CPU cores)
test-slow: install
	$(PYTEST) -m slow

# every torchvision classification model and one model of every timm family (tests/test_timm_walk.py), built and
# pruned with two methods or refused before training (hours on 2 CPU cores); the timm table: scripts/timm_walk.py
test-walk: install
	$(PYTEST) -m walk

bench: install
	$(PY) scripts/bench_regularizer.py
	$(PY) scripts/bench_prune.py
	$(PY) scripts/bench_epoch.py

# the documentation site (docs/, mkdocs.yml) into site/; --strict: a broken link or a page missing from the nav fails
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

# the site at http://127.0.0.1:8000, rebuilt on every edit
docs-serve: install
	$(VENV)/bin/mkdocs serve

# docs/reference/configuration.md from prune_runner/config.py and conf/ (tests/test_config_reference.py checks it)
docs-reference: install
	$(PY) scripts/gen_config_reference.py

lint:
	$(VENV)/bin/ruff check prune_runner hydra_plugins tests scripts

clean:
	rm -rf outputs .pytest_cache site
