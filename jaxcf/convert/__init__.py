"""Converters from PyTorch / safetensors checkpoints to jaxcf parameters (one file per
source)."""
