"""Generated stubs of the public contract `llmserve.v1` (do not edit; run `make protos`)."""
