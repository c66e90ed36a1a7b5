# The two set-up commands of the README:  `make demo`  and  `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip
OUT ?= out/demo

.PHONY: install browser demo test bench clean

# MediaPipe 0.10.21 is installed without its dependencies (its pins would downgrade numpy and
# break pandas/pyarrow). What it needs is in pyproject.toml.
install: browser
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q --no-deps "mediapipe==0.10.21"

# The report test opens report.html in headless Chromium: Debian's chromium + chromedriver (no
# browser download). Installed with apt-get where missing; skipped when both are already there.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		  chromium chromium-driver >/dev/null; }

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
