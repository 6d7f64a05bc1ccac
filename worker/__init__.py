"""Celery app and scoring tasks: bundle id in, prediction row out."""
