"""The Llama family of models (Llama 2/3/3.1, Mistral, Qwen2, Qwen3, SmolLM2) for the engine."""
