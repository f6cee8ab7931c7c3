"""Segmentation utilities (paper 002's segmenters and refiners): sliding-window inference
over whole volumes (``sliding_window``), the losses (``losses``: Soft Dice, DiceCE, the
refiner's boundary-weighted MSE) and the BraTS label <-> class maps and region Dice
(``labels``). Trained segmenters and refiners are loaded by jaxcf.training.segmenter and
jaxcf.inference.load_refiner."""

from jaxcf.segmentation.sliding_window import (
    importance_map,
    sliding_window_inference,
    window_starts,
)

__all__ = ["importance_map", "sliding_window_inference", "window_starts"]
