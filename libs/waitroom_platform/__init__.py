"""Shared I/O for the services: settings blocks, Kafka clients, the embedded broker, logging."""
