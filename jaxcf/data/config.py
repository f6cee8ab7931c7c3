"""The ``data`` sub-config shared by prepare, the pipelines and the training loop."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import ml_collections
from ml_collections.config_dict import config_dict as _config_dict

from jaxcf.errors import InputError

DATASETS = ("brats2021", "brats2023", "brats-peds", "ms", "adni", "cxr")
TASKS = ("slices2d", "volumes", "seg3d", "cxr")
# Which tasks make sense for which dataset (prepare refuses the others).
TASKS_FOR = {
    "brats2021": ("slices2d", "volumes", "seg3d"),
    "brats2023": ("slices2d", "volumes", "seg3d"),
    "brats-peds": ("slices2d", "volumes", "seg3d"),
    "brats": ("slices2d", "volumes", "seg3d"),
    "ms": ("volumes",),
    "adni": ("volumes",),
    "cxr": ("cxr",),
}
# Image channels each dataset gives: BraTS the four modalities (T1, T1ce, T2, FLAIR, in
# jaxcf.data.sources.MODALITIES order), MS FLAIR / ADNI T1 / radiographs one.
CHANNELS = {
    "brats2021": 4,
    "brats2023": 4,
    "brats-peds": 4,
    "brats": 4,
    "ms": 1,
    "adni": 1,
    "cxr": 1,
}


def channels_of(dataset: str) -> int:
    """The image channels of ``dataset`` (CHANNELS); ValueError naming the known datasets."""
    if dataset not in CHANNELS:
        raise InputError(f"data.dataset must be one of {', '.join(CHANNELS)}, got {dataset!r}")
    return CHANNELS[dataset]


def _drop_default(fn: Callable[..., Any], _default: Any, *values: Any) -> Any:
    return fn(*values)


def derived(fn: Callable[..., Any], *fields: Any, field_type: type = int):
    """A config field computed on access from other fields: ``fn(*their values)``.

    ``fields`` are FieldReferences (``config.get_ref("name")``) or constants; the value
    follows them, so ``--config.data.image_size=64`` moves every field derived from it.
    Setting the derived field itself (``--config.model.in_channels=4``) replaces the
    computation for that field only. ``fn`` should be a module-level function (configs stay
    picklable). FieldReference arithmetic (``ref // 8``) covers the simple cases; this is
    for look-ups (a preset's or a dataset's properties)."""
    # ml_collections applies an op as fn(own value, *args) on get(); the own value is unused.
    op = _config_dict._Op(functools.partial(_drop_default, fn), list(fields))
    return ml_collections.FieldReference(field_type(), field_type=field_type, op=op)


def _same(value: Any) -> Any:
    return value


def follow(config: ml_collections.ConfigDict, key: str):
    """A one-way reference to ``config[key]`` (ConfigDict.get_oneway_ref, which closes over a
    lambda, but picklable): the value follows the field until it is set itself."""
    ref = config.get_ref(key)
    return derived(_same, ref, field_type=ref.get_type())


def default_data_config() -> ml_collections.ConfigDict:
    """Defaults = Diff-SCM's BraTS 2021 slices at 64 x 64. Every field:

    dataset: brats2021 | brats2023 | brats-peds | ms | adni | cxr (layouts in docs/data.md).
    root: dataset directory; None -> the training loop writes phantoms (see ``phantom``) first.
    prepared: directory of prepared shards (jaxcf.data.prepare); None -> workdir/prepared.
    task: slices2d (Diff-SCM 2-D axial slices, BraTS) | volumes (WDM cubes; BraTS / MS / ADNI,
        with prompts for MS / ADNI) | seg3d (paper 002: foreground-cropped, z-scored BraTS
        volumes; random crops in the pipeline) | cxr (radiographs + organ masks + prompts).
    image_size: side of 2-D slices / radiographs (Diff-SCM trains at 64, evaluates at 128;
        paper 000 uses 128; paper 003 uses 512).
    volume_size: side of WDM cubes (128 in WDM; 240 x 240 x 155 -> pad 256 -> pool 2).
    channels: image channels of the dataset (derived from ``dataset``: BraTS 4 modalities,
        MS / ADNI / CXR 1); experiment configs derive the model's input channels from it.
    value_range: (lo, hi) of WDM volumes after min-max: (-1, 1) as WDM trains (wdm-3d
        ``--renormalize=True``: 2x - 1); samplers clip the x0 estimate to it
        (jaxcf.training.spaces: static_clip / wavelet_clip to the data range).
    min_brain_fraction: slices2d skips axial slices with less brain than this fraction.
    splits: (train, val, test) case fractions; splits are by case, seeded by ``seed``.
    batch_size: GLOBAL batch; each of ``shard_count`` hosts gets batch_size // shard_count.
    seed: seeds splits, shuffling and augmentation.
    shuffle: shuffle the training stream (global, per epoch, reshuffled every epoch).
    num_workers: 0 = in-process (threads); > 0 = Grain worker processes (spawn start method:
        the entry point needs an ``if __name__ == "__main__":`` guard).
    num_threads: reader threads per process (memory-mapped reads release the GIL).
    prefetch: batches buffered ahead (per process).
    balanced: class-balanced training stream (each label equally frequent; paper 004's
        class-weighted sampling for MS / ADNI).
    prompt_max_len: token length of prompt ids (77 words + <bos> + <eos> fits 80 for CXR).
    augment: random training augmentation (seg3d: paper 002's crops / flips / rot90 /
        intensity; volumes: flips on 3 axes; slices2d: left-right flip; cxr: none, since a
        flip would swap the patient's left and right in the prompts and masks).
    crop_size: seg3d training crop side (96 in paper 002).
    pos_fraction: seg3d probability of a crop centred on tumour (0.5: balanced pos / neg).
    drop_remainder_eval: eval mode drops the last partial batch instead of padding it
        (padding keeps shapes fixed; padded rows have ``valid`` False).
    phantom.cases / size / tumour_free_fraction / anatomy: the phantom dataset the loop writes
        when ``root`` is None (number of cases, volume side, share of cases without a lesion,
        brain anatomy: mni152 = real MNI152 anatomy with per-subject deformation, the
        default; procedural = fast geometric heads for unit tests). docs/data.md.
    """
    c = ml_collections.ConfigDict()
    c.dataset = "brats2021"
    c.root = ml_collections.config_dict.placeholder(str)
    c.prepared = ml_collections.config_dict.placeholder(str)
    c.task = "slices2d"
    c.image_size = 64
    c.volume_size = 128
    c.channels = derived(channels_of, c.get_ref("dataset"))
    c.value_range = (-1.0, 1.0)
    c.min_brain_fraction = 0.05
    c.splits = (0.7, 0.15, 0.15)
    c.batch_size = 64
    c.seed = 0
    c.shuffle = True
    c.num_workers = 0
    c.num_threads = 4
    c.prefetch = 4
    c.balanced = False
    c.prompt_max_len = 80
    c.augment = False
    c.crop_size = 96
    c.pos_fraction = 0.5
    c.drop_remainder_eval = False
    c.phantom = ml_collections.ConfigDict()
    c.phantom.cases = 16
    c.phantom.size = 48
    c.phantom.tumour_free_fraction = 0.25
    c.phantom.anatomy = "mni152"
    return c
