"""Pretrained text towers as prompt encoders: `python -m jaxcf.text.encode` precomputes a
model's prompt embeddings for text.encoder = "file"."""
