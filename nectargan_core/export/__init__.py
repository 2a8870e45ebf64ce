"""Exporting the generator for inference outside PyTorch."""
