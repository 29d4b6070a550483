"""The HTTP service (twisted.web): request counter, health, readiness, metrics."""
