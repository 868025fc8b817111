"""The engine: a library with no gRPC inside that takes requests and produces tokens."""
