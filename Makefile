# Two entry points on a fresh machine: `make demo` (the offline end-to-end demo) and `make test`.
# Both create .venv and install what they need first.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat requirements.txt requirements-dev.txt | cksum | cut -d' ' -f1)

.PHONY: venv test demo demo-dpo tiny clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	rm -f $(VENV)/.installed-*
	touch $@

# The tiny offline tokenizer and checkpoints used by the demo and the tests.
tiny: $(STAMP)
	$(PY) tools/build_tiny_checkpoints.py

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) tools/run_demo.py

# Preference alignment after the SFT demo (runs `make demo` first when its model is missing).
demo-dpo: $(STAMP)
	$(PY) tools/run_dpo_demo.py
