"""Test models made locally (no network): tiny random checkpoints and SmolLM2 from its GGUF."""
