# The two commands of the README:
#   make demo   set up, start the local stack, recover the bodies in a real photo
#   make test   set up, lint (ruff, formatting, mypy, import contracts), run every test
VENV ?= .venv
BIN := $(VENV)/bin
PHOTO ?= ../shared/data/photos/codait_yogait_t6.jpg
OUT ?= out

.PHONY: setup demo test test-unit lint bench bench-prior bench-lifting bench-load bench-datasets train-prior down clean

setup:
	./scripts/setup.sh

demo: setup
	$(BIN)/bodyserve stack up
	$(BIN)/bodyserve submit $(PHOTO) -o $(OUT)
	@echo "The stack is still running: try the curl examples in README.md; stop it with 'make down'."

test: setup lint
	$(BIN)/python -m pytest -q -rs

test-unit: setup
	$(BIN)/python -m pytest -q -rs tests/unit

# The layers (.importlinter), style and types; part of make test, so CI fails on any of them.
lint: setup
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy shared services

bench: setup
	$(BIN)/python bench/mesh_recovery.py --data ../shared/data/photos --json $(OUT)/bench_mesh_recovery.json

bench-prior: setup
	$(BIN)/python bench/prior.py --data ../shared/data/mocap --json $(OUT)/bench_prior.json

bench-lifting: setup
	$(BIN)/python bench/lifting.py --data ../shared/data/mocap --json $(OUT)/bench_lifting.json

# 240 jobs from 32 concurrent clients on a local stack it starts and stops: lost, duplicated, p50/p99.
bench-load: setup
	$(BIN)/python bench/load.py --jobs 240 --clients 32 --json $(OUT)/bench_load.json

# Synthetic datasets: images/s per worker at 256² and 512², labels checked; then a 2,000-image
# job through a local stack with two dataset workers, every label checked.
bench-datasets: setup
	$(BIN)/python bench/datasets.py throughput --images 256 --check 300 --json $(OUT)/bench_datasets.json
	$(BIN)/python bench/datasets.py job --images 2000 --workers 2 --json $(OUT)/bench_dataset_job.json

# Trains the pose prior on the shared CMU mocap and publishes it as the next pose_prior version.
train-prior: setup
	$(BIN)/bodyserve train prior --data ../shared/data/mocap --out var/train/prior

down:
	$(BIN)/bodyserve stack down

clean: down
	rm -rf var $(OUT)
