"""Where a chest X-ray prompt asks for its finding: paper 003's ROI mask M_ROI, chosen from
the text's laterality and zone cues (Sec. 2.3) and the lung masks.

    cues = prompt_cues("Opacity in the right lower zone")  # sides ("right",), zones ("lower",)
    right, left = split_lungs(lung_mask)        # or a dataset's right_lung / left_lung masks
    roi = roi_mask(cues, right, left)           # (H, W) bool: the right lung's lower third

Sides are the patient's: on a PA radiograph the patient's right lung is on the image's left
(split_lungs assumes that view). Zones are thirds of each lung's craniocaudal extent, the
upper / middle / lower lung zones of a frontal film (no fissures are visible on one, so
lobes map to zones: "right lower lobe" -> right, lower). The words read:

  sides   right, left; bilateral / both / bibasilar -> both lungs
  zones   upper, apical, apex, apices -> upper; middle, mid, midlung, lingula, lingular,
          perihilar -> middle; lower, basal, base, bases, basilar, bibasilar -> lower

No side word: both lungs; no zone word: the whole lung. The anatomy mask M_anat of Eq. 5
is the lung fields (both lungs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from jaxcf.data.text import words
from jaxcf.errors import InputError

SIDES = ("right", "left")
ZONES = ("upper", "middle", "lower")
SIDE_WORDS = {
    "right": ("right",),
    "left": ("left",),
    "bilateral": SIDES,
    "both": SIDES,
    "bibasilar": SIDES,
}
ZONE_WORDS = {
    "upper": "upper",
    "apical": "upper",
    "apex": "upper",
    "apices": "upper",
    "middle": "middle",
    "mid": "middle",
    "midlung": "middle",
    "lingula": "middle",
    "lingular": "middle",
    "perihilar": "middle",
    "lower": "lower",
    "basal": "lower",
    "base": "lower",
    "bases": "lower",
    "basilar": "lower",
    "bibasilar": "lower",
}


@dataclasses.dataclass(frozen=True)
class Cues:
    """The patient sides and lung zones a prompt names (empty: it names none)."""

    sides: tuple[str, ...]
    zones: tuple[str, ...]

    def describe(self) -> str:
        """ "right lower zone", "both lungs, upper zones", "left lung", ..."""
        side = self.sides[0] if len(self.sides) == 1 else "both"
        zone = " and ".join(self.zones) if self.zones else ""
        if not zone:
            return f"{side} lung" if side != "both" else "both lungs"
        return f"{side} {zone} zone" + ("s" if side == "both" or len(self.zones) > 1 else "")


def prompt_cues(prompt: str) -> Cues:
    """The sides and zones of a prompt (module docstring); none named -> all of them."""
    sides: set[str] = set()
    zones: set[str] = set()
    for word in words(prompt):
        sides.update(SIDE_WORDS.get(word, ()))
        if word in ZONE_WORDS:
            zones.add(ZONE_WORDS[word])
    return Cues(
        tuple(s for s in SIDES if s in sides) or SIDES,
        tuple(z for z in ZONES if z in zones),
    )


def zone_mask(lung: np.ndarray, zones: Sequence[str]) -> np.ndarray:
    """(H, W) bool: the lung's pixels in the rows of `zones`, thirds of its row extent
    (top row to bottom row); no zones -> the whole lung."""
    lung = np.asarray(lung, bool)
    if not zones or not lung.any():
        return lung.copy()
    rows = np.flatnonzero(lung.any(axis=1))
    top, height = rows[0], rows[-1] + 1 - rows[0]
    index = np.arange(lung.shape[0])
    third = np.clip(((index - top) * 3) // height, 0, 2)
    keep = np.isin(third, [ZONES.index(z) for z in zones])
    return lung & keep[:, None]


def roi_mask(cues: Cues, right: np.ndarray, left: np.ndarray) -> np.ndarray:
    """(H, W) bool M_ROI: the named zones of the named lungs (patient sides)."""
    lungs = {"right": np.asarray(right, bool), "left": np.asarray(left, bool)}
    out = np.zeros(lungs["right"].shape, bool)
    for side in cues.sides:
        out |= zone_mask(lungs[side], cues.zones)
    return out


def split_lungs(lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One (H, W) lung-field mask (non-zero = lung) -> (patient right, patient left) bool,
    for a PA view: each connected part goes to the side of the midline (halfway between
    the leftmost and rightmost lung columns) its centroid lies on."""
    lungs = np.asarray(lungs) != 0
    if not lungs.any():
        raise InputError("the lung mask is empty")
    cols = np.flatnonzero(lungs.any(axis=0))
    midline = (cols[0] + cols[-1]) / 2.0
    labels, count = ndimage.label(lungs)
    centres = ndimage.center_of_mass(lungs, labels, range(1, count + 1))
    right = np.isin(labels, [i + 1 for i, (_, c) in enumerate(centres) if c < midline])
    return right, lungs & ~right


def method_masks(
    right: np.ndarray, left: np.ndarray, prompts: Sequence[str]
) -> dict[str, np.ndarray]:
    """Per-row inputs of the attention method: right, left (N, H, W) lung masks and one
    prompt per row -> {"anatomy" (N, H, W) float32 lung fields, "roi" (N, H, W) float32
    M_ROI from each prompt's cues}. A prompt whose ROI misses the lungs is refused."""
    right, left = np.asarray(right, bool), np.asarray(left, bool)
    if right.shape != left.shape or right.ndim != 3 or len(prompts) != len(right):
        raise InputError(
            f"method_masks: lung masks {right.shape} / {left.shape} and {len(prompts)} "
            "prompts do not line up"
        )
    roi = np.stack(
        [roi_mask(prompt_cues(p), r, q) for p, r, q in zip(prompts, right, left, strict=True)]
    )
    empty = ~roi.reshape(len(roi), -1).any(axis=1)
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise InputError(
            f"prompt {prompts[i]!r} asks for the {prompt_cues(prompts[i]).describe()}, "
            "which holds no lung pixels in its mask"
        )
    return {"anatomy": (right | left).astype(np.float32), "roi": roi.astype(np.float32)}
