"""Celery tasks: thin shells that load state, call the core, act through adapters and record."""
