"""Stepline: generated protobuf contracts (see proto/ for the sources)."""
