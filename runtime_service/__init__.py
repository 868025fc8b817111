"""runtime_service: loads an engine and serves it with continuous batching over gRPC."""
