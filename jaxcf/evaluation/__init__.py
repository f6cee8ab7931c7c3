"""Evaluation: counterfactual -> tumour-mask post-processing and segmentation metrics.

``postprocess`` turns a factual image and its healthy counterfactual into a mask (paper 000)
or a heatmap (paper 001); ``metrics`` scores masks per case and heatmaps over a test set;
``image_metrics`` compares images (PSNR, SSIM, MS-SSIM: subject preservation and sample
diversity, paper 004); ``fid`` the Fréchet distance of Med3D features of real vs generated
volumes (FID, paper 004; labelled "FD (untrained ...)" when the extractor has random weights).
"""

from jaxcf.evaluation.fid import (
    FeatureExtractor,
    FIDResult,
    feature_statistics,
    fid_3d,
    fid_from_features,
    frechet_distance,
    med3d_extractor,
    metric_label,
    table_column,
)
from jaxcf.evaluation.image_metrics import (
    diversity_ms_ssim,
    ms_ssim,
    ms_ssim_settings,
    psnr,
    ssim,
    subject_preservation,
)
from jaxcf.evaluation.metrics import (
    StreamingAUPRC,
    case_metrics,
    dice,
    flair_scores,
    iou,
    markdown_table,
    precision,
    sensitivity,
    summarize,
    threshold_baseline,
)
from jaxcf.evaluation.postprocess import (
    difference_map,
    fill_holes,
    foreground_mask,
    heatmap,
    largest_component,
    match_histograms,
    otsu_mask,
    segment_from_counterfactual,
    vote,
)

__all__ = [
    "FIDResult",
    "FeatureExtractor",
    "StreamingAUPRC",
    "case_metrics",
    "dice",
    "difference_map",
    "diversity_ms_ssim",
    "feature_statistics",
    "fid_3d",
    "fid_from_features",
    "fill_holes",
    "flair_scores",
    "foreground_mask",
    "frechet_distance",
    "heatmap",
    "iou",
    "largest_component",
    "markdown_table",
    "match_histograms",
    "med3d_extractor",
    "metric_label",
    "ms_ssim",
    "ms_ssim_settings",
    "otsu_mask",
    "precision",
    "psnr",
    "segment_from_counterfactual",
    "sensitivity",
    "ssim",
    "subject_preservation",
    "summarize",
    "table_column",
    "threshold_baseline",
    "vote",
]
