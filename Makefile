# Two entry points for a fresh machine: `make demo` (install + run the main job) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
# These machines carry a local CPU wheel of torch 2.13.0; elsewhere set TORCH=torch (or a CUDA build).
TORCH ?= torch==2.13.0
EXTRAS ?= hf,openai,soft,plot,dev,mlflow,ray,retrieval
VLLM_VENV ?= .venv-vllm

.PHONY: install demo test test-fast test-vllm clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(VENV)/bin/promptopt download-model
	touch $@

demo: install
	$(VENV)/bin/promptopt optimize --task demo --strategy paraphrase

test: install
	$(VENV)/bin/python -m pytest -ra

test-fast: install
	$(VENV)/bin/python -m pytest -ra -m "not model and not vllm"

test-vllm:
	bash .ci/vllm-env.sh $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pytest -ra -m vllm tests/test_vllm_backend.py tests/test_vllm_server.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info
