"""Generated gRPC stubs of kakeya.v1 (see proto/generate.py)."""
