"""Why this file exists: one source tree, two wheels.

Everything else about the build is declared in ``pyproject.toml``. Only the package list and the
scripts (``waitroom-dev`` belongs to one of the packages) live here, because it depends on the
environment, which static TOML cannot express:

* by default (``pip install -e '.[dev]'``, ``pip wheel .``) every package is built, the developer
  tooling ``waitroom_devtools`` included;
* with ``WAITROOM_BUILD_RUNTIME_ONLY=1`` (how the production image builds its wheel) the wheel holds
  only what the services run: no ``waitroom_devtools`` (embedded Kafka, dev command, Zipkin, the
  OTLP bridge) and no ``waitroom-dev`` script pointing at it.

The import-linter contract "The shipped packages never import the developer tooling" keeps the
runtime-only wheel complete.
"""

from __future__ import annotations

import os

from setuptools import setup

#: import name -> folder, for what every wheel ships
RUNTIME_PACKAGES = {
    "waitroom_events": "libs/waitroom_events",
    "waitroom_core": "libs/waitroom_core",
    "waitroom_platform": "libs/waitroom_platform",
    "waitroom_ticketing": "services/ticketing",
    "waitroom_reaper": "services/reaper",
    "waitroom_stats": "services/stats",
    "waitroom_notifier": "services/notifier",
    "waitroom_cli": "libs/waitroom_cli",
}
#: the operator's console command, in every wheel (the image's too: `kubectl exec ... waitroom rooms list`)
RUNTIME_SCRIPTS = ["waitroom = waitroom_cli.main:main"]
#: only for development, tests and benchmarks; never in the image
DEV_PACKAGES = {"waitroom_devtools": "libs/waitroom_devtools"}
DEV_SCRIPTS = ["waitroom-dev = waitroom_devtools.devstack:main"]


def runtime_only() -> bool:
    value = os.environ.get("WAITROOM_BUILD_RUNTIME_ONLY", "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise SystemExit(f"WAITROOM_BUILD_RUNTIME_ONLY must be 1 or 0, not {value!r}")


packages = dict(RUNTIME_PACKAGES) if runtime_only() else {**RUNTIME_PACKAGES, **DEV_PACKAGES}
setup(
    packages=list(packages),
    package_dir=packages,
    entry_points={"console_scripts": RUNTIME_SCRIPTS if runtime_only() else RUNTIME_SCRIPTS + DEV_SCRIPTS},
    # A separate build folder per variant, so files copied by one build never end up in the other's wheel.
    options={"build": {"build_base": "build/runtime" if runtime_only() else "build/full"}},
)
