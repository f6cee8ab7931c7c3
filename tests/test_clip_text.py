"""CLIP text tower (SD 1.5's text encoder): jaxcf.models.clip_text, its converter
jaxcf.convert.clip_text and the BPE tokenizer jaxcf.data.clip_bpe.

Fast tests: shapes, parameter count, the causal mask, EOS pooling, clip skip, state-dict
round trips in both key layouts, layout detection, key-mismatch errors, tokenizer rules on
a tiny merges table. `ref` tests: parity with a random small transformers CLIPTextModel
(loaded from a save_pretrained folder, a `text_model.*` file and a single-file SD
checkpoint), and with OpenCLIP's and transformers' tokenizers on the merges file shipped
in the `open-clip-torch` wheel.

Tolerance: the issue asks <= 1e-4 in float32. Our forward pass differs from torch's only
in summation order; rounding errors add like a random walk, about L * sqrt(K) * u * max|h|
for L layers, dot products of length K and unit roundoff u = 2^-24 ~ 6e-8. For the test
model (L = 2, K <= 77, max|h| ~ 4) that is ~ 2 * 9 * 6e-8 * 4 ~ 4e-6 (measured: 6.3e-6),
16x under the bound, while a real layout error (a transposed kernel, GELU for quick_gelu,
a missing causal mask) moves outputs by 1e-2 and more (checked below: GELU for quick_gelu, 6.9e-2).
The reference's parameters are redrawn with larger scales (weights 0.3, LayerNorms
1 +- 0.1) so that every part of the model changes the outputs.
"""

import dataclasses
import functools
import importlib.util
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import save_file

from jaxcf.convert.clip_text import (
    HF_PREFIX,
    SD_PREFIX,
    clip_text_state_dict,
    detect_prefix,
    load_clip_text,
)
from jaxcf.convert.common import CheckpointError
from jaxcf.data import clip_bpe
from jaxcf.data.clip_bpe import EOT, SOT, CLIPTokenizer, read_merges
from jaxcf.errors import InputError
from jaxcf.models.clip_text import (
    CLIP_VIT_L14,
    CLIPTextConfig,
    CLIPTextModel,
    param_count,
    pool_eos,
)

ATOL = 1e-4  # float32 parity, see the module docstring
# hidden 128 = two heads of CLIP's width 64, so file-only loads infer the head count.
TINY = CLIPTextConfig(
    vocab_size=100,
    hidden_size=128,
    num_layers=2,
    num_heads=2,
    intermediate_size=64,
    max_position=16,
)
PROMPTS = [
    "chest x-ray with pleural effusion in the left lung",
    "Chest X-ray: bilateral pleural effusion and cardiomegaly",
    "FLAIR MRI of a brain with a high lesion load",
    "T2-weighted: 3.5mm lesions (n=12)! $100 ~~~ don't, it's we're I'LL",
    "Alzheimer's disease, MMSE 18/30; 2024-05-01",
    "Café naïve résumé façade Ünïcödé İstanbul Straße",
    "  multiple\t\nspaces   and\ttabs  ",
    "中文 text 日本語 한국어 emoji 🫁",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "very long prompt with many words " * 20,  # truncated to 77 with the end token kept
    "",
]
# ftfy and HTML cleanup (OpenCLIP applies both; transformers' fast tokenizer neither).
CLEANUP_PROMPTS = ["“curly” quotes &amp; &lt;tags&gt; ﬁne \uff46\uff55\uff4c\uff4c width"]


def build(config: CLIPTextConfig = TINY, seed: int = 0) -> CLIPTextModel:
    return CLIPTextModel(config, rngs=nnx.Rngs(seed))


def sample_ids(batch: int, length: int, vocab: int, seed: int = 0) -> np.ndarray:
    """Random ids below vocab - 1, with the largest id (the EOS for argmax pooling) placed
    at a different position in each row."""
    ids = np.random.default_rng(seed).integers(0, vocab - 1, (batch, length))
    for row in range(batch):
        ids[row, (3 + 5 * row) % length] = vocab - 1
    return ids


@functools.partial(nnx.jit, static_argnames=("skip", "output_hidden_states"))
def forward(model, ids, mask=None, skip=0, output_hidden_states=False) -> dict:
    """model(...) compiled whole: one XLA compile (~1 s, then cached) instead of one per
    eager op (~4 s)."""
    return model(ids, mask, skip=skip, output_hidden_states=output_hidden_states)


def max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


# --- the model ------------------------------------------------------------------------------


def test_shapes_and_parameter_count():
    model = build()
    out = forward(model, sample_ids(2, 16, 100))
    assert out["last_hidden_state"].shape == (2, 16, 128)
    assert out["pooled"].shape == (2, 128)
    assert out["last_hidden_state"].dtype == jnp.float32
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert sum(x.size for x in leaves) == param_count(TINY)
    # SD 1.5's text encoder: 123,060,480 parameters (built abstractly, nothing sampled).
    abstract = nnx.eval_shape(lambda: CLIPTextModel(CLIP_VIT_L14, rngs=nnx.Rngs(0)))
    sizes = [x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))]
    assert sum(sizes) == param_count(CLIP_VIT_L14) == 123_060_480
    with pytest.raises(InputError, match="max_position"):
        forward(model, np.zeros((1, 17), np.int32))


def test_causal_mask():
    """Changing the token at position j changes no output before j."""
    model = build()
    ids = sample_ids(1, 16, 100)
    changed = ids.copy()
    changed[0, 9] = (ids[0, 9] + 1) % 99
    a = forward(model, ids)["last_hidden_state"]
    b = forward(model, changed)["last_hidden_state"]
    np.testing.assert_allclose(a[:, :9], b[:, :9], atol=1e-6, rtol=0)
    assert max_diff(a[:, 9:], b[:, 9:]) > 1e-3


def test_padding_mask():
    """Real positions never see the padding after them (causal), mask or not; padded
    positions attend only to the real tokens with the mask, so they change."""
    model = build()
    ids = sample_ids(2, 16, 100)
    mask = np.ones((2, 16), np.int32)
    mask[1, 6:] = 0
    plain = forward(model, ids)["last_hidden_state"]
    masked = forward(model, ids, mask)["last_hidden_state"]
    np.testing.assert_allclose(plain[0], masked[0], atol=1e-6, rtol=0)
    np.testing.assert_allclose(plain[1, :6], masked[1, :6], atol=1e-6, rtol=0)
    assert max_diff(plain[1, 7:], masked[1, 7:]) > 1e-4


def test_pooling_at_eos():
    hidden = jnp.arange(2 * 5 * 3, dtype=jnp.float32).reshape(2, 5, 3)
    ids = jnp.array([[7, 9, 4, 9, 0], [7, 1, 2, 3, 8]])
    # legacy id 2: the argmax of the ids (its first occurrence)
    np.testing.assert_array_equal(
        pool_eos(hidden, ids, 2), hidden[jnp.arange(2), jnp.array([1, 4])]
    )
    # any other id: its first occurrence
    np.testing.assert_array_equal(
        pool_eos(hidden, ids, 4), hidden[jnp.arange(2), jnp.array([2, 0])]
    )
    model = build()
    ids = sample_ids(3, 16, 100)
    out = forward(model, ids)
    where = ids.argmax(-1)
    np.testing.assert_array_equal(out["pooled"], out["last_hidden_state"][np.arange(3), where])


def test_clip_skip():
    """skip=1 is the final LayerNorm of the penultimate layer's output (diffusers'
    clip_skip=1); hidden_states are the embeddings and each layer's output."""
    model = build()
    ids = sample_ids(2, 16, 100)
    full = forward(model, ids, output_hidden_states=True)
    assert len(full["hidden_states"]) == TINY.num_layers + 1
    np.testing.assert_allclose(
        model.final_norm(full["hidden_states"][-1]), full["last_hidden_state"], atol=1e-6
    )
    skipped = forward(model, ids, skip=1)
    want = model.final_norm(full["hidden_states"][-2])
    np.testing.assert_allclose(skipped["last_hidden_state"], want, atol=1e-6)
    assert max_diff(skipped["last_hidden_state"], full["last_hidden_state"]) > 1e-3
    with pytest.raises(InputError, match="skip"):
        forward(model, ids, skip=TINY.num_layers)


def test_config_from_hf_and_validation():
    hf = {
        "vocab_size": 49408,
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
        "eos_token_id": 2,
        "projection_dim": 768,
    }
    assert CLIPTextConfig.from_hf(hf) == CLIP_VIT_L14
    assert CLIPTextConfig.from_hf({"text_config": hf}).hidden_size == 768
    with pytest.raises(InputError, match="num_heads"):
        CLIPTextConfig(hidden_size=100, num_heads=12)
    with pytest.raises(InputError, match="activation"):
        CLIPTextConfig(activation="relu")


# --- the converter (no torch) -----------------------------------------------------------------


def test_round_trip_both_layouts(tmp_path):
    """Our own state dict, saved in each layout (the SD file with a UNet and a VAE key
    beside it), loads back to the same outputs; the layout is detected."""
    model = build()
    ids = sample_ids(2, 16, 100)
    want = forward(model, ids)
    hf_file = tmp_path / "text_encoder.safetensors"
    save_file(clip_text_state_dict(model, HF_PREFIX), str(hf_file))
    sd_state = clip_text_state_dict(model, SD_PREFIX)
    sd_state["model.diffusion_model.x"] = np.zeros(3, np.float32)
    sd_state["first_stage_model.decoder.conv_in.weight"] = np.zeros((2, 2), np.float32)
    sd_file = tmp_path / "sd15.safetensors"
    save_file(sd_state, str(sd_file))
    assert detect_prefix(sd_state, "sd") == SD_PREFIX
    for file in (hf_file, sd_file):
        loaded, config = load_clip_text(file)
        assert config == TINY
        got = forward(loaded, ids)
        assert max_diff(got["last_hidden_state"], want["last_hidden_state"]) == 0.0
        assert max_diff(got["pooled"], want["pooled"]) == 0.0


def test_pipeline_folder_with_config_json(tmp_path):
    """A diffusers pipeline folder: text_encoder/model.safetensors + config.json (which
    sets the head count and the activation)."""
    config = dataclasses.replace(TINY, hidden_size=32, num_heads=4, activation="gelu")
    model = build(config)
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    save_file(clip_text_state_dict(model), str(folder / "model.safetensors"))
    hf = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "max_position_embeddings": 16,
        "vocab_size": 100,
        "hidden_act": "gelu",
        "eos_token_id": 2,
    }
    (folder / "config.json").write_text(json.dumps(hf))
    loaded, got_config = load_clip_text(tmp_path)
    assert got_config == config
    ids = sample_ids(1, 16, 100)
    assert max_diff(forward(loaded, ids)["pooled"], forward(model, ids)["pooled"]) == 0.0


def test_mismatched_keys_are_listed(tmp_path):
    state = clip_text_state_dict(build())
    del state["text_model.encoder.layers.1.mlp.fc2.bias"]
    state["text_model.encoder.layers.0.self_attn.extra.weight"] = np.zeros(2, np.float32)
    state["text_model.embeddings.position_ids"] = np.arange(16)[None]  # a buffer: ignored
    file = tmp_path / "bad.safetensors"
    save_file(state, str(file))
    with pytest.raises(CheckpointError) as err:
        load_clip_text(file)
    message = str(err.value)
    assert "\n" not in message and str(file) in message
    assert "1 missing keys: text_model.encoder.layers.1.mlp.fc2.bias" in message
    assert "1 unexpected keys: text_model.encoder.layers.0.self_attn.extra.weight" in message

    other = tmp_path / "unet.safetensors"
    save_file({"model.diffusion_model.x": np.zeros(2, np.float32)}, str(other))
    with pytest.raises(CheckpointError, match="not a CLIP text encoder"):
        load_clip_text(other)

    wrong = clip_text_state_dict(build())
    with pytest.raises(CheckpointError, match="do not fit"):
        from jaxcf.convert.clip_text import clip_text_params_from_hf

        bigger = dataclasses.replace(TINY, intermediate_size=96)
        abstract = nnx.eval_shape(lambda: CLIPTextModel(bigger, rngs=nnx.Rngs(0)))
        clip_text_params_from_hf(wrong, nnx.state(abstract, nnx.Param), bigger)


# --- the tokenizer on a tiny merges table (no vocabulary file needed) ---------------------------

TINY_MERGES = [
    ("c", "h"),
    ("e", "s"),
    ("ch", "es"),
    ("t</w>", "x"),
    ("es", "t</w>"),
    ("ch", "est</w>"),
]


def tiny_tokenizer(**kwargs) -> CLIPTokenizer:
    return CLIPTokenizer(TINY_MERGES, **kwargs)


def test_bpe_merges_in_rank_order():
    tok = tiny_tokenizer()
    # c h e s t</w> -> ch e s t</w> -> ch es t</w> -> ches t</w>: rank 2 ("ch", "es") comes
    # before rank 4 ("es", "t</w>"), so "chest</w>" (rank 5) is never formed.
    assert [tok.decoder[i] for i in tok.tokenize("chest")] == ["ches", "t</w>"]
    assert [tok.decoder[i] for i in tok.tokenize("Chest!")] == ["ches", "t</w>", "!</w>"]
    assert tok.vocab_size == 512 + len(TINY_MERGES) + 2
    assert (tok.sot_id, tok.eot_id) == (tok.vocab_size - 2, tok.vocab_size - 1)
    # bytes: printable first in the vocabulary, the space byte after them
    assert tok.decoder[0] == "!" and tok.decoder[188] == chr(256)


def test_encode_pads_and_truncates():
    tok = tiny_tokenizer()
    ids = tok.encode("chest")
    assert ids.shape == (77,) and ids.dtype == np.int32
    assert ids[0] == tok.sot_id and ids[3] == tok.eot_id
    assert (ids[4:] == tok.eot_id).all()  # SD 1.5 pads with <|endoftext|>
    zero_pad = tiny_tokenizer(pad_token=0).encode("chest")
    assert (zero_pad[4:] == 0).all() and (zero_pad[:4] == ids[:4]).all()
    long = tok.encode("a " * 200)
    assert long[0] == tok.sot_id and long[-1] == tok.eot_id and (long[1:-1] != tok.eot_id).all()
    assert tok(["chest", "a"]).shape == (2, 77)
    mask = tok.attention_mask(tok(["chest", "a b"]))
    assert mask.sum(-1).tolist() == [4, 4]
    assert tok.decode(tok.encode("Chest, x-ray!")) == "chest , x - ray !"
    with pytest.raises(InputError, match="pad_token"):
        tiny_tokenizer(pad_token="<pad>")


def test_cleanup_and_pieces():
    assert clip_bpe.clean("  A&amp;amp;B \t\n C ") == "a&b c"
    pieces = clip_bpe.piece_pattern().findall("it's 3.5mm, x-ray" + EOT)
    assert pieces == ["it", "'s", "3", ".", "5", "mm", ",", "x", "-", "ray", EOT]
    tok = tiny_tokenizer()
    assert tok.tokenize(f"{SOT}{EOT}") == [tok.sot_id, tok.eot_id]


def test_stdlib_pattern_matches_regex():
    """Without the `regex` package the same pieces come from stdlib re."""
    pytest.importorskip("regex")
    std = clip_bpe.stdlib_pattern()
    for text in [*PROMPTS, "ǅungla ⅻ ½ ٣ x²", "a\x1cb\x85c\u3000d"]:
        for variant in (text, clip_bpe.clean(text)):
            assert std.findall(variant) == clip_bpe.piece_pattern().findall(variant), variant


def test_merges_file_errors(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="no CLIP BPE merges file"):
        CLIPTokenizer.from_file(tmp_path / "missing.txt.gz")
    short = tmp_path / "short.txt"
    short.write_text("#version: 0.2\nc h\ne s\n")
    with pytest.raises(InputError, match="expected 48894 merges"):
        read_merges(short)
    assert CLIPTokenizer.from_file(short, num_merges=2).vocab_size == 512 + 2 + 2
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match="open-clip-torch"):
        CLIPTokenizer.from_open_clip()


# --- parity with transformers and OpenCLIP (ref) -----------------------------------------------


def _reference_clip(activation: str, seed: int = 0):
    """A random small transformers CLIPTextModel with its parameters redrawn at larger
    scales (see the module docstring)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    hf_config = transformers.CLIPTextConfig(
        vocab_size=1000,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=activation,
        bos_token_id=0,
        pad_token_id=1,
        eos_token_id=2,  # SD 1.5's config: pool at the argmax of the ids
    )
    torch.manual_seed(seed)
    ref = transformers.CLIPTextModel(hf_config).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            is_norm_scale = "norm" in name and name.endswith("weight")
            p.copy_(torch.randn_like(p) * (0.3 if p.ndim > 1 else 0.1) + float(is_norm_scale))
    return torch, ref


def _text_model_state(ref) -> dict[str, np.ndarray]:
    """The model's tensors under `text_model.` (transformers 4 / SD 1.5 text_encoder files;
    transformers 5 saves CLIPTextModel without the prefix)."""
    state = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
    return {HF_PREFIX + k.removeprefix(HF_PREFIX): v for k, v in state.items()}


@pytest.fixture(scope="module")
def quick_gelu_reference(tmp_path_factory):
    torch, ref = _reference_clip("quick_gelu")
    folder = tmp_path_factory.mktemp("clip_text")
    ref.save_pretrained(folder / "text_encoder")
    ids = sample_ids(3, 77, 1000)
    mask = np.ones_like(ids)
    mask[1, 30:] = 0
    with torch.no_grad():
        plain = ref(torch.tensor(ids), output_hidden_states=True)
        masked = ref(torch.tensor(ids), attention_mask=torch.tensor(mask))
    want = {
        "last": plain.last_hidden_state.numpy(),
        "pooled": plain.pooler_output.numpy(),
        "penultimate": ref.final_layer_norm(plain.hidden_states[-2]).detach().numpy(),
        "masked": masked.last_hidden_state.numpy(),
    }
    return folder, ref, ids, mask, want


@pytest.mark.ref
def test_transformers_parity_all_layouts(quick_gelu_reference, tmp_path):
    """save_pretrained folder (config.json), a `text_model.*` file, and a single-file SD
    checkpoint with a UNet key: outputs equal to <= 1e-4."""
    folder, ref, ids, mask, want = quick_gelu_reference
    state = _text_model_state(ref)
    hf_file = tmp_path / "text_model.safetensors"
    save_file(state, str(hf_file))
    sd_state = {SD_PREFIX + k.removeprefix(HF_PREFIX): v for k, v in state.items()}
    sd_state["model.diffusion_model.x"] = np.zeros(4, np.float32)
    sd_file = tmp_path / "sd15.safetensors"
    save_file(sd_state, str(sd_file))

    loads = {
        "save_pretrained folder": load_clip_text(folder),
        "text_model.* file": load_clip_text(hf_file, num_heads=4),
        "single-file SD": load_clip_text(sd_file, num_heads=4),
    }
    for name, (model, config) in loads.items():
        assert (config.num_layers, config.num_heads, config.hidden_size) == (2, 4, 32), name
        out = forward(model, ids)
        d_last = max_diff(out["last_hidden_state"], want["last"])
        d_pool = max_diff(out["pooled"], want["pooled"])
        print(f"{name}: last_hidden_state {d_last:.2e}, pooled {d_pool:.2e}")
        assert d_last <= ATOL and d_pool <= ATOL, name

    model, _ = loads["save_pretrained folder"]
    d_mask = max_diff(forward(model, ids, mask)["last_hidden_state"], want["masked"])
    d_skip = max_diff(forward(model, ids, skip=1)["last_hidden_state"], want["penultimate"])
    print(f"padding mask {d_mask:.2e}, clip skip 1 {d_skip:.2e}")
    assert d_mask <= ATOL and d_skip <= ATOL
    print(f"max |h| = {np.abs(want['last']).max():.2f}")

    # the bound discriminates: the wrong activation is far outside it
    wrong, _ = load_clip_text(
        sd_file, dataclasses.replace(loads["single-file SD"][1], activation="gelu")
    )
    d_wrong = max_diff(forward(wrong, ids)["last_hidden_state"], want["last"])
    print(f"GELU instead of quick_gelu: {d_wrong:.2e}")
    assert d_wrong > 100 * ATOL


@pytest.mark.ref
def test_transformers_parity_gelu(tmp_path):
    """OpenCLIP-style towers use exact GELU: same parity."""
    torch, ref = _reference_clip("gelu", seed=1)
    ref.save_pretrained(tmp_path)
    model, config = load_clip_text(tmp_path)
    assert config.activation == "gelu"
    ids = sample_ids(2, 40, 1000, seed=1)
    with torch.no_grad():
        want = ref(torch.tensor(ids))
    out = forward(model, ids)
    d_last = max_diff(out["last_hidden_state"], want.last_hidden_state.numpy())
    d_pool = max_diff(out["pooled"], want.pooler_output.numpy())
    print(f"gelu: last_hidden_state {d_last:.2e}, pooled {d_pool:.2e}")
    assert d_last <= ATOL and d_pool <= ATOL


def _open_clip_tokenizer_module():
    """open_clip/tokenizer.py loaded on its own: importing the open_clip package also loads
    torchvision and timm, which the tokenizer does not need (and PyPI's torchvision does not
    load against the CPU build of torch)."""
    pytest.importorskip("torch")
    pytest.importorskip("ftfy")
    pytest.importorskip("regex")
    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        pytest.skip("open-clip-torch is not installed")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "tokenizer.py"
    module_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer_ref", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def open_clip_vocab() -> pathlib.Path:
    if importlib.util.find_spec("open_clip") is None:
        pytest.skip("open-clip-torch is not installed")
    return clip_bpe.find_open_clip_vocab()


@pytest.mark.ref
def test_tokenizer_matches_open_clip(open_clip_vocab):
    ref = _open_clip_tokenizer_module()
    before = set(sys.modules)
    tok = CLIPTokenizer.from_open_clip(pad_token=0)  # OpenCLIP pads with 0
    assert "open_clip" not in set(sys.modules) - before  # found, not imported
    prompts = PROMPTS + CLEANUP_PROMPTS
    want = ref.tokenize(prompts).numpy()
    got = tok(prompts)
    mismatched = [p for p, a, b in zip(prompts, got, want, strict=True) if (a != b).any()]
    assert not mismatched
    assert (got[PROMPTS.index("very long prompt with many words " * 20)] != 0).all()
    simple = ref.SimpleTokenizer(str(open_clip_vocab))
    for text in prompts:
        assert tok.tokenize(text) == simple.encode(text), text
    print(f"OpenCLIP tokenize: {len(prompts)} prompts identical")


@pytest.mark.ref
def test_tokenizer_matches_transformers_sd_padding(open_clip_vocab, tmp_path):
    """transformers' CLIPTokenizer (SD 1.5's, eos padding) built offline from vocab.json +
    merges.txt written from the same merges file."""
    transformers = pytest.importorskip("transformers")
    tok = CLIPTokenizer.from_file(open_clip_vocab)
    merges = read_merges(open_clip_vocab)
    vocab = {token: i for i, token in enumerate(tok.decoder)}
    (tmp_path / "vocab.json").write_text(json.dumps(vocab))
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (tmp_path / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (49406, 49407, 49407)
    want = hf(PROMPTS, padding="max_length", max_length=77, truncation=True)["input_ids"]
    got = tok(PROMPTS)
    mismatched = [p for p, a, b in zip(PROMPTS, got, want, strict=True) if a.tolist() != b]
    assert not mismatched
    print(f"transformers CLIPTokenizer: {len(PROMPTS)} prompts identical")
