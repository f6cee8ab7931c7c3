"""A tiny random BERT text tower on disk (safetensors + vocab.txt, no config.json), for the
tests of jaxcf.text.encode and jaxcf.text.tower."""

from __future__ import annotations

import pathlib

from flax import nnx
from safetensors.numpy import save_file

from jaxcf.convert.bert import bert_state_dict
from jaxcf.models.bert import Bert, BertConfig

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_bert(folder: pathlib.Path, words: list[str], hidden: int = 16) -> pathlib.Path:
    """A 1-layer, 2-head BERT of width `hidden` over the special tokens and `words`."""
    vocab = [*SPECIAL, *words]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_layers=1,
        num_heads=2,
        intermediate_size=2 * hidden,
    )
    save_file(bert_state_dict(Bert(config, rngs=nnx.Rngs(0))), str(folder / "model.safetensors"))
    return folder
