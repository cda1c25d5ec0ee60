"""Kakeya server: config, model loading, the batched engine, gRPC service, CLI."""
