"""Shared I/O for the services: settings blocks, Kafka clients and admin, delayed topics, logging, telemetry.

Shipped in the image. The developer tooling (embedded broker, dev command, trace UI) is ``waitroom_devtools``.
"""
