VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo lint format bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

DEMO_CKPT := runs/demo/checkpoints/last.ckpt

demo: $(STAMP)
	@# the demo starts afresh each time; a previous demo run is kept beside it, never deleted
	@if [ -e runs/demo ]; then kept=runs/demo-$$(date +%Y%m%d-%H%M%S); mv runs/demo $$kept; \
		echo "The previous demo run is kept in $$kept"; fi
	$(VENV)/bin/ebmflow fit --config conf/demo.yaml
	$(VENV)/bin/ebmflow test --config conf/demo.yaml --ckpt_path $(DEMO_CKPT)
	$(VENV)/bin/ebmflow sample --config conf/demo.yaml --ckpt_path $(DEMO_CKPT) --out runs/demo/samples
	$(VENV)/bin/ebmflow report runs/demo --out runs/demo/report
	@echo
	@echo "Demo finished. Results:"
	@echo "  samples     runs/demo/samples/samples.png, discrete_columns.png (Fig. 3), samples.npz, *_step=S.png"
	@echo "  metrics     runs/demo/metrics.csv (val bits/dim, FID, IS, code NMI per epoch; test bits/dim and log Z at the end)"
	@echo "  report      runs/demo/report/table.md, curves.png"
	@echo "  checkpoint  $(DEMO_CKPT)"
	@echo "  config      runs/demo/config.yaml"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: $(STAMP)
	$(PY) -m bench.flow_step
	$(PY) -m bench.priors
	$(PY) -m bench.samplers

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
