"""Pretrained text towers as prompt encoders: `python -m jaxcf.text.encode` precomputes a
model's prompt embeddings for text.encoder = "file"; jaxcf.text.tower runs the frozen tower
on the fly for text.encoder = "tower"."""
