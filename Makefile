# The two set-up commands of the README:  `make demo`  and  `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= out/demo

.PHONY: install demo test bench clean

# MediaPipe 0.10.21 is installed without its dependencies: with them it would downgrade numpy
# and break pandas/pyarrow. The few it needs are regular dependencies in pyproject.toml.
install:
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps "mediapipe==0.10.21"

demo: install
	facefab preprocess samples/ --out $(OUT)
	facefab report $(OUT) --html $(OUT)/report.html
	@echo "open $(OUT)/report.html"

test: install
	$(PYTHON) -m pytest -q -p no:cacheprovider

bench: install
	$(PYTHON) benchmarks/preprocess_throughput.py

clean:
	rm -rf out build *.egg-info
