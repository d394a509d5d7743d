# Two commands do all the set-up on a fresh clone: `make demo` and `make test`.
# Each creates (or refreshes) the virtualenv in .venv when pyproject.toml or constraints.txt change.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Debian's chromium for tests/test_gallery_browser.py: installed here, once, so that no test installs anything
BROWSER := $(VENV)/.chromium
# DeepSpeed's shared-memory collective for CPU processes, compiled on first use into ~/.cache/torch_extensions
DS_OPS := $(VENV)/.deepspeed-ops
# pytest workers of `make test` (pytest-xdist; each test file runs whole in one worker): 2 halves the suite's time on
# this project's 2-core machine; more cores can take more (`make test TEST_WORKERS=4`), 0 runs it in one process
TEST_WORKERS ?= 2

.PHONY: venv demo text-demo edit-demo test test-slow lint docs bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-build-isolation -c constraints.txt deepspeed
	touch $(STAMP)

venv: $(STAMP)

# A browser already on PATH is used as it is; otherwise root with apt-get installs Debian's package (CI runs
# `make test` as root on a fresh clone). Where neither works the browser test skips, saying so, and make
# tries again next time (no stamp).
$(BROWSER): | $(STAMP)
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then touch $@; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian's chromium for the gallery's browser test"; \
	  ( export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq chromium >/dev/null ) \
	    && touch $@ || echo "warning: apt-get could not install chromium: tests/test_gallery_browser.py will skip" >&2; \
	else echo "warning: no chromium, and installing it needs apt-get as root: tests/test_gallery_browser.py will skip" >&2; fi

# the op DeepSpeed builds when a CPU process group starts (tests/test_distributed.py, tests/test_text_distributed.py):
# compiled here once, as part of the set-up, instead of inside the first DeepSpeed test (1-2 min on 2 cores)
$(DS_OPS): $(STAMP)
	$(PY) -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/flowrl train --config configs/demo.yaml

text-demo: $(STAMP)
	$(VENV)/bin/flowrl train --config configs/text_demo.yaml

# the toy edit world's rows and images (deterministic), written again when their generator changes
data/toy-edit/held-out.jsonl: flowrl/image/toy_edit_data.py flowrl/image/toy_edit.py | $(STAMP)
	$(PY) -m flowrl.image.toy_edit_data --out data/toy-edit

edit-demo: $(STAMP) data/toy-edit/held-out.jsonl
	$(VENV)/bin/flowrl train --config configs/edit_demo.yaml

test: $(STAMP) $(BROWSER) $(DS_OPS)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test-slow: $(STAMP) $(DS_OPS)
	$(PY) -m pytest -q -m slow

docs: $(STAMP)
	$(PY) -m mkdocs build --strict

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build site *.egg-info
