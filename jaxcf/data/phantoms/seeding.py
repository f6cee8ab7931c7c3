"""Deterministic randomness: independent per-case streams and the choice of healthy cases.

Each case draws from its own `SeedSequence((seed, kind, case))`, split into named streams
(anatomy, pathology, contrast, noise, confounders), so a case's pixels do not depend on how
many cases are generated, and re-rendering a case without its pathology (the healthy
counterfactual) keeps the same anatomy, contrast, confounders and noise.
"""

from __future__ import annotations

import numpy as np

from jaxcf.errors import InputError

KIND_IDS = {"brats2021": 1, "brats2023": 2, "brats-peds": 3, "ms": 4, "adni": 5, "cxr": 6}
# Appended streams never change the earlier ones (SeedSequence children are numbered).
STREAMS = ("anatomy", "pathology", "contrast", "noise", "ids", "confounders")


def case_rngs(seed: int, kind: str, case: int) -> dict[str, np.random.Generator]:
    """Independent generators for one case, keyed by STREAMS."""
    children = np.random.SeedSequence((seed, KIND_IDS[kind], case)).spawn(len(STREAMS))
    return {name: np.random.default_rng(c) for name, c in zip(STREAMS, children, strict=True)}


def dataset_rng(seed: int, kind: str, purpose: int) -> np.random.Generator:
    """A generator for dataset-level choices (healthy cases, ids), disjoint from case streams
    (case streams use three-word entropy, these four)."""
    return np.random.default_rng(np.random.SeedSequence((seed, KIND_IDS[kind], 0, purpose)))


def healthy_cases(count: int, fraction: float, seed: int, kind: str) -> frozenset[int]:
    """Exactly round-half-up(fraction * count) case indices, chosen at random, to be healthy
    (tumour-free BraTS cases, normal radiographs)."""
    if not 0.0 <= fraction <= 1.0:
        raise InputError(f"tumour_free_fraction must be in [0, 1], got {fraction}")
    chosen = int(np.floor(fraction * count + 0.5))
    order = dataset_rng(seed, kind, 1).permutation(count)
    return frozenset(int(i) for i in order[:chosen])
