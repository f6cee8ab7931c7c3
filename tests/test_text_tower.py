"""text.encoder = "tower" (jaxcf.text.tower): a frozen pretrained BERT / CLIP run on the
fly. The retokenizer must give exactly the tower tokenizer's ids of the decoded prompt
(multi-piece words, unknown words, truncation, the null prompt), inside jit; the
conditioner must give exactly the tower's states of those ids; a toy WDM trains with it and
the counterfactual CLI rebuilds it from the workdir. The ref test checks the retokenizer on
CLIP's real BPE vocabulary (open-clip-torch) with radiology sentences."""

from __future__ import annotations

import importlib.util
import pathlib

import jax
import numpy as np
import pytest
from tower_fixtures import save_tiny_bert

from jaxcf.data.clip_bpe import CLIPTokenizer
from jaxcf.data.text import Tokenizer, build_vocab
from jaxcf.errors import InputError
from jaxcf.text.tower import Tower, load_tower

REPO = pathlib.Path(__file__).resolve().parents[1]
PROMPTS = (
    "Subject has minimal lesion load",
    "Subject has high lesion loads",  # "loads" -> load ##s
    "Subject has a periventricular lesion",  # "periventricular": not in the tower's vocab
)
# The BERT vocabulary: whole words, one suffix piece, no "a" or "periventricular".
BERT_WORDS = ["subject", "has", "minimal", "high", "lesion", "load", "##s", "moderate"]


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    """A tiny random BERT (16-d) saved as safetensors with its vocab.txt."""
    return save_tiny_bert(tmp_path_factory.mktemp("bert"), BERT_WORDS)


def _data(prompts=PROMPTS, max_len=8):
    words = Tokenizer(build_vocab(prompts), max_len)
    ids, mask = words.encode_batch(list(prompts))
    null = np.zeros((1, max_len), np.int32)
    null[0, 0] = words.vocab.index("<bos>")
    ids, mask = np.concatenate([ids, null]), np.concatenate([mask, null == null[0, 0]])
    return words, ids, mask


def _check_retokenizer(tower: Tower, words: Tokenizer, ids, mask):
    expected_ids, expected_mask = tower.tokenize([words.decode(row) for row in ids])
    got_ids, got_mask = jax.jit(tower.retokenizer(words.vocab).__call__)(ids, mask)
    np.testing.assert_array_equal(np.asarray(got_ids), expected_ids)
    np.testing.assert_array_equal(np.asarray(got_mask), expected_mask)
    return expected_ids


def test_bert_retokenizer_is_the_wordpiece_of_the_decoded_prompt(bert_folder):
    tower = load_tower(bert_folder, max_len=9, num_heads=2)
    words, ids, mask = _data()
    expected = _check_retokenizer(tower, words, ids, mask)
    vocab = {i: w for w, i in tower.tokenizer.vocab.items()}
    pieces = [[vocab[i] for i in row if i != tower.tokenizer.pad_id] for row in expected]
    assert pieces[1] == ["[CLS]", "subject", "has", "high", "lesion", "load", "##s", "[SEP]"]
    assert pieces[2][3:5] == ["[UNK]", "[UNK]"]  # "a", "periventricular"
    assert pieces[3] == ["[CLS]", "[SEP]"]  # the null prompt: the empty text
    # Truncated: 7 tower tokens fit between [CLS] and [SEP], [SEP] is kept.
    short = load_tower(bert_folder, max_len=6, num_heads=2)
    expected = _check_retokenizer(short, words, ids, mask)
    assert (expected[:3, -1] == short.tokenizer.sep_id).all()


def test_clip_retokenizer_is_the_bpe_of_the_decoded_prompt():
    merges = [("c", "h"), ("e", "s"), ("ch", "es"), ("l", "e"), ("le", "s"), ("o", "a")]
    tokenizer = CLIPTokenizer(merges, context_length=12)
    tower = Tower("clip", model=None, tokenizer=tokenizer, dim=16)
    prompts = ("Chest X-ray with 3 lesions", "chest", "lesion load 12")
    words, ids, mask = _data(prompts, max_len=6)
    expected = _check_retokenizer(tower, words, ids, mask)
    assert (expected[:, 0] == tokenizer.sot_id).all()
    assert (expected[0, -1] == tokenizer.eot_id) and (expected[0, 1:-1] != tokenizer.eot_id).all()


def _tower_config(folder, vocab, dim=16):
    from jaxcf.training.config import base_config

    c = base_config()
    c.diffusion.condition = "prompt"
    c.text.update(encoder="tower", checkpoint=str(folder), dim=dim, tower_max_len=10, tower_heads=2)
    c.text.data_vocab = list(vocab)
    return c


def test_tower_conditioner_runs_the_frozen_tower_on_the_prompts(bert_folder):
    from jaxcf.training.conditioners import build_conditioner

    words, ids, mask = _data()
    conditioner, params, frozen = build_conditioner(
        _tower_config(bert_folder, words.vocab), jax.random.key(0)
    )
    assert params == {} and set(frozen) == {"text"}  # frozen: never trained
    cond = {"prompt_ids": ids, "prompt_mask": mask}
    out = jax.jit(conditioner.encode)(params, frozen, cond)
    tower = load_tower(bert_folder, max_len=10, num_heads=2)
    tower_ids, tower_mask = tower.tokenize([words.decode(row) for row in ids])
    expected = tower.model(tower_ids, tower_mask)
    np.testing.assert_allclose(out["context"], expected, atol=1e-5)
    np.testing.assert_array_equal(out["context_mask"], tower_mask)
    assert out["context"].shape == (4, 10, 16)

    with pytest.raises(InputError, match=r"text.dim=32 .* 16-d tokens .*text.dim=16"):
        build_conditioner(_tower_config(bert_folder, words.vocab, 32), jax.random.key(0))
    with pytest.raises(InputError, match=r"text\.data_vocab is empty"):
        build_conditioner(_tower_config(bert_folder, []), jax.random.key(0))
    empty = _tower_config(bert_folder, words.vocab)
    empty.text.checkpoint = ""
    with pytest.raises(InputError, match=r"needs text\.checkpoint"):
        build_conditioner(empty, jax.random.key(0))


def test_a_toy_wdm_trains_with_a_tower_and_the_cli_rebuilds_it(bert_folder, tmp_path, capsys):
    """configs/wdm_ms.py:toy with text.encoder=tower, two steps; the workdir's config.json
    records the data words, and python -m jaxcf.counterfactual reloads the tower."""
    from jaxcf.counterfactual import __main__ as cli
    from jaxcf.inference import saved_config
    from jaxcf.training.loop import train_and_evaluate

    spec = importlib.util.spec_from_file_location("wdm_ms", REPO / "configs" / "wdm_ms.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config("toy")
    config.train.update(num_steps=2, checkpoint_every=2, log_every=1)
    overrides = {"encoder": "tower", "checkpoint": str(bert_folder), "dim": 16}
    config.text.update(tower_heads=2, **overrides)
    workdir = tmp_path / "wdm"
    train_and_evaluate(config, workdir)
    trained = saved_config(workdir).text
    assert "lesion" in trained.data_vocab and trained.encoder == "tower"

    argv = [
        "counterfactual",
        f"--config={REPO / 'configs' / 'wdm_ms.py'}:toy",
        f"--checkpoint={workdir}",
        "--method=prompt_swap",
        "--config.counterfactual.prompt_swap.num_steps=2",
        f"--out={tmp_path / 'out'}",
        "--count=1",
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert "prompt_swap (synthetic): 1 subject(s)" in capsys.readouterr().out


@pytest.mark.ref
def test_clip_retokenizer_on_the_real_bpe_vocabulary():
    """open-clip-torch's merges: the radiology words split into several BPE pieces."""
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open-clip-torch is not installed")
    tokenizer = CLIPTokenizer.from_open_clip()
    tower = Tower("clip", model=None, tokenizer=tokenizer, dim=768)
    prompts = (
        "Right lower lobe opacity, likely pneumonia",
        "Left pleural effusion with atelectasis",
        "No acute cardiopulmonary process",
        "Subject has Alzheimer's disease, MMSE 18",
    )
    words, ids, mask = _data(prompts, max_len=12)
    expected = _check_retokenizer(tower, words, ids, mask)
    assert (tower.retokenizer(words.vocab).lengths > 1).any()  # multi-piece words
    assert (expected[:, 0] == tokenizer.sot_id).all()
