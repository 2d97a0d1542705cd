"""The model router: one model answer per request, routed across providers with failover."""
