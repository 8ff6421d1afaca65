# The two commands of the README: `make dev` runs the whole system, `make test` the whole suite.
# Both install what they need first (Python packages; Kafka's jars are fetched on first use into
# ~/.cache/waitroom, outside the clone).

PYTHON ?= python3
STAMP := .cache/installed.stamp

.PHONY: dev test lint unit browser install images containers kube-build kube-up kube-down clean

install: $(STAMP)

$(STAMP): pyproject.toml setup.py
	@command -v java >/dev/null || { echo "waitroom needs Java 17+ for the embedded Kafka (apt-get install openjdk-17-jre-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "waitroom needs Maven to fetch Kafka's jars (apt-get install maven)"; exit 1; }
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@mkdir -p .cache && touch $(STAMP)

dev: install
	$(PYTHON) -m waitroom_devtools.devstack

lint: install
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .
	$(PYTHON) -m mypy
	lint-imports

unit: install
	$(PYTHON) -m pytest -m "not integration and not e2e and not browser and not containers and not kube"

test: lint browser containers kube-build
	$(PYTHON) -m pytest

# The browser tests drive Debian's Chromium through Playwright (no browser download).
browser:
	@test -x /usr/bin/chromium || { echo "installing Debian's chromium for the browser tests"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }

# The container images, built with podman on Debian bases made here (docs/images.md); cached in
# ~/.cache/waitroom/images and podman's storage. Needs root the first time (apt, debootstrap).
images: install
	images/build.sh

# What the container tests (tests/containers) run: the app, Kafka and moto images, built (cached) by
# the same script, which first installs podman, runc and debootstrap with apt where they are missing.
# Only a non-root user without podman gets no images (and those tests are skipped, saying why).
containers: install
	@if [ "$$(id -u)" != 0 ] && ! command -v podman >/dev/null; then \
	  echo "containers: podman is not installed and this is not root: the container tests will be skipped"; \
	else images/build.sh all; fi

# A real single-node Kubernetes on this machine (docs/kubernetes.md): kube-build compiles its binaries
# from the Go module proxy once (~20 min on 2 cores; cached in ~/.cache/waitroom/kube, reused after),
# kube-up starts it (and imports the images of `make containers`), kube-down stops it and leaves the
# host as it was. The Kubernetes tests (tests/kube, marker kube) start and stop it themselves.
# Without root there is no cluster: kube-build then says so and the tests are skipped.
kube-build:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "kube-build: not root: no local Kubernetes, the kube tests will be skipped"; \
	else kube/build.sh all; fi

kube-up: kube-build
	kube/cluster.sh up

kube-down:
	kube/cluster.sh down

clean:
	rm -rf .cache var build *.egg-info .pytest_cache .mypy_cache .ruff_cache
