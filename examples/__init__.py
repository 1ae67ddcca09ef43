"""A user service and a message service, run as one monolith or split over Kafka.

``python -m examples.demo`` (``make demo``) shows both: the handler code is the same, only
the configuration files differ. See docs/operations.md and docs/configuration.md.
"""
