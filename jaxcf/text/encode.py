"""Precompute prompt embeddings with a pretrained text tower, for text.encoder = "file".

    python -m jaxcf.text.encode --checkpoint=BiomedCLIP_or_BERT_folder \\
        --tokenizer=runs/wdm_ms/prepared/ms_volumes/meta.json \\
        --prompts="Subject has minimal lesion load|Subject has high lesion load" --out=emb.npz
    python -m jaxcf.text.encode --checkpoint=sd15/text_encoder --tower=clip ...

The tower (BERT: BiomedCLIP's PubMedBERT text tower or any BERT; CLIP: Stable Diffusion
1.5's ViT-L/14 text transformer) is read from local files only (jaxcf.convert.bert /
clip_text) and tokenises with its own vocabulary (WordPiece from vocab.txt beside the
checkpoint; CLIP's BPE from the open-clip-torch package or --vocab). The npz holds what
jaxcf.models.text.PrecomputedText looks up: `prompt_ids` (P, L), the prompts as the
model's data tokenizer writes them (--tokenizer: a prepared dataset's meta.json or a
workdir's tokenizer.json), `embeddings` (P, L2, D) and `mask` (P, L2): the tower's last
hidden states (--output=tokens, the default: cross-attention context) or one pooled,
projected token (--output=pooled). The null prompt (<bos> only, classifier-free guidance's)
is always added, encoded from the empty string. Prompts are encoded once, in one batch.

Exit codes: 0 done, 2 bad input (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

import numpy as np

from jaxcf.cli import ArgumentParser, call, parse_args
from jaxcf.errors import InputError

PROG = "jaxcf.text.encode"
TOWERS = ("auto", "bert", "clip")
OUTPUTS = ("tokens", "pooled")


def _parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="python -m jaxcf.text.encode", description=__doc__)
    parser.add_argument("--checkpoint", required=True, help="tower weights: file or folder")
    parser.add_argument(
        "--tokenizer", required=True, help="the diffusion model's data tokenizer (json)"
    )
    parser.add_argument(
        "--prompts", required=True, help="prompts separated by '|', or a text file, one a line"
    )
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--tower", choices=TOWERS, default="auto", help="default: from keys")
    parser.add_argument("--vocab", default=None, help="tower vocabulary (vocab.txt / bpe .gz)")
    parser.add_argument("--output", choices=OUTPUTS, default="tokens")
    parser.add_argument("--max-len", type=int, default=64, help="BERT tokens (default 64)")
    parser.add_argument("--num-heads", type=int, default=None, help="if no config.json")
    return parser


def read_prompts(spec: str) -> list[str]:
    """--prompts: a file with one prompt a line, or prompts separated by '|'."""
    path = pathlib.Path(spec)
    text = path.read_text() if path.is_file() else spec
    sep = "\n" if path.is_file() else "|"
    prompts = [p.strip() for p in text.split(sep) if p.strip()]
    if not prompts:
        raise InputError(f"--prompts: no prompt in {spec!r}")
    return prompts


def data_tokenizer(path: str):
    """A Tokenizer from tokenizer.json, a prepared dataset's meta.json or its folder."""
    from jaxcf.data.text import Tokenizer

    file = pathlib.Path(path)
    if file.is_dir():
        file = file / "meta.json"
    if not file.is_file():
        raise FileNotFoundError(f"--tokenizer: no such file {file}")
    obj = json.loads(file.read_text())
    obj = obj.get("tokenizer", obj) if file.name == "meta.json" else obj
    if "vocab" not in obj:
        raise InputError(f"--tokenizer: {file} holds no prompt tokenizer")
    return Tokenizer.from_json(obj)


def encode_texts(args: argparse.Namespace, texts: list[str]) -> tuple[str, np.ndarray, np.ndarray]:
    """(tower kind, embeddings (N, L2, D), mask (N, L2)) of `texts` by --checkpoint's tower:
    its tokens' last states (--output=tokens) or one pooled, projected token (pooled)."""
    from jaxcf.text.tower import encode_tokens, load_tower

    tower = load_tower(
        args.checkpoint,
        kind=args.tower,
        vocab=args.vocab,
        max_len=args.max_len,
        num_heads=args.num_heads,
    )
    ids, mask = tower.tokenize(texts)
    if args.output == "tokens":
        tokens, token_mask = encode_tokens(tower.kind, tower.model, ids, mask)
        return tower.kind, np.asarray(tokens), np.asarray(token_mask, bool)
    if tower.kind == "bert":
        if tower.model.config.proj is None:
            raise InputError(f"--output=pooled needs a projection head; {args.checkpoint} has none")
        pooled = np.asarray(tower.model.encode_text(ids, mask))
    else:
        pooled = np.asarray(tower.model(ids)["pooled"])
    return tower.kind, pooled[:, None], np.ones((len(pooled), 1), bool)


def encode(args: argparse.Namespace) -> dict:
    """Write the npz; returns a summary."""
    prompts = read_prompts(args.prompts)
    tokenizer = data_tokenizer(args.tokenizer)
    from jaxcf.data.text import known_prompt_tokens

    words = known_prompt_tokens(tokenizer, prompts, "--prompts")  # unknown words: refused
    null_ids = np.zeros((1, tokenizer.max_len), np.int32)
    null_ids[0, 0] = tokenizer.vocab.index("<bos>")
    prompt_ids = np.concatenate([words["prompt_ids"], null_ids])
    tower, embeddings, mask = encode_texts(args, [*prompts, ""])
    out = pathlib.Path(args.out)
    if out.suffix != ".npz":
        raise InputError(f"--out: {out} must end in .npz")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp.npz")
    np.savez(tmp, prompt_ids=prompt_ids, embeddings=embeddings.astype(np.float32), mask=mask)
    tmp.replace(out)
    return {"tower": tower, "prompts": len(prompts), "shape": embeddings.shape, "out": out}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(PROG, _parser(), argv)
    if isinstance(args, int):
        return args
    code, summary = call(PROG, lambda: encode(args))
    if code:
        return code
    print(
        f"{summary['tower']}: {summary['prompts']} prompts + the null prompt -> embeddings "
        f"{summary['shape']} in {summary['out']}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
