"""PyTorch reference networks for benchmarks/vs_torch.py (the benchmark's own code)."""
