# The two commands in the README. Each creates .venv and installs what it needs.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch is pinned only here (the dev set-up); the package metadata keeps a broad range.
TORCH_PIN := torch==2.13.0

.PHONY: demo test venv clean

# Two install stamps: `make demo` installs the `demo` extra (torch and the simulator's
# progress bars), `make test` the whole `dev` set (S3, parquet, plots, moto, hypothesis,
# pytest). After `make demo`, `make test` adds the rest to the same venv.
$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH_PIN)

$(BIN)/.demo-installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[demo]'
	touch $@

$(BIN)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

venv: $(BIN)/.installed

# torchrun's store listens on PORT and dtruntime's control plane on PORT + 1:
# `make demo PORT=29700` when either is taken.
PORT ?= 29650

# The main job: 4 local workers under torchrun (DDP on CPU with gloo), local checkpoints in
# out/checkpoints (a second run resumes from them), then a failure simulation report.
demo: $(BIN)/.demo-installed
	$(BIN)/torchrun --nproc-per-node 4 --master-port $(PORT) examples/train_ddp.py --epochs 3 --checkpoint-dir out/checkpoints
	$(BIN)/python -m simulations leader-crash --workers 16 --seed 1 --seeds 10

# Two pytest workers: most tests wait on heartbeats, timeouts and child processes, so two
# share a 2-core machine well (about 8 min instead of 14 on the CI machine's kind).
test: venv
	$(BIN)/python -m pytest -n 2

clean:
	rm -rf $(VENV)
