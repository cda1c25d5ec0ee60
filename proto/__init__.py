"""The kakeya.v1 wire contract: the .proto source and its generated stubs."""
