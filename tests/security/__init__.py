"""Kafka security: SASL/SCRAM local broker and per-service ACLs."""
