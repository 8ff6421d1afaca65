"""Developer tooling: the embedded Kafka broker, the dev command, Zipkin with its OTLP bridge, and
the process helpers that run services as children (for the dev command, the tests and the benchmarks).

None of it is needed to run a service, and the production image never ships it: the image's wheel
is built with ``WAITROOM_BUILD_RUNTIME_ONLY=1`` (see ``setup.py``), which leaves this package out.
The shipped packages (``waitroom_events``, ``waitroom_core``, ``waitroom_platform`` and the services)
never import it; an import-linter contract in ``pyproject.toml`` holds them to that.
"""
