"""The gateway's OpenAI-compatible HTTP API (`--http-port`): /v1/models, /v1/chat/completions
and /v1/completions over the gRPC servicer's own code path. See docs/openai.md."""
