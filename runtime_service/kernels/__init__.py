"""Attention backends: the torch reference (CPU, any device) and Triton kernels for CUDA."""
