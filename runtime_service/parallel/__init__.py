"""Tensor parallelism: one model split over the devices of a node (see docs/tensor_parallel.md)."""
