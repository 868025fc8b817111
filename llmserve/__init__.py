"""llmserve: LLM serving for NVIDIA GPUs as gRPC microservices.

This package holds what the three daemons (builder_service, runtime_service, gateway) share:
configuration, logging, telemetry, gRPC server helpers, the artifact-store client, the
generated stubs of the public contract (llmserve.v1) and the `llmserve` command line.
"""

__version__ = "0.1.0"
