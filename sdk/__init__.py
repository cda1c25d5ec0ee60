"""Kakeya Python SDK."""
