"""WDM: 3-D wavelet diffusion (Friedrich et al. 2024) and its language-guided variant
(Mohamed et al. 2025).

The network is jaxcf's ADM UNet run on Haar wavelet coefficients: a volume (B, D, H, W, C)
becomes 8C sub-bands at half resolution (jaxcf.models.wavelet.to_wavelet, low-low-low band
divided by 3), noise is added in that domain, and the network predicts the x0 sub-bands
(schedule prediction "x0", plain MSE). Sampling returns coefficients; from_wavelet gives
the volume, and `wavelet_clip` is WDM's clip_denoised as an x0 transform.

WDM's UNet (reference run.sh): 64 channels, mult 1,2,2,4,4 (128^3) / 1,2,2,4,4,4 (256^3),
2 res blocks, no attention anywhere, no scale-shift norm, resblock up/down, additive skips
(h + skip) / 2, 32 groups, fp32.

The language-guided model adds Simple Diffusion's changes (Hoogeboom et al. 2023): a deeper
bottleneck, dropout at the low resolutions only, and cross-attention to text tokens at
several scales. The paper gives no sizes; jaxcf's choices: 4 bottleneck res blocks (WDM:
2), dropout 0.1 at the two lowest resolutions and the bottleneck, cross-attention at every
resolution below the full wavelet grid (32^3 ... 4^3 for 128^3 volumes) with 64-channel
heads, 768-wide text tokens (BiomedCLIP's text transformer width; set context_dim for
another encoder). Self-attention stays off: 64^3 = 262k tokens.
"""

from __future__ import annotations

from jaxcf.models.unet import UNet
from jaxcf.models.wavelet import from_wavelet, to_wavelet, wavelet_clip

__all__ = ["PRESETS", "UNet", "from_wavelet", "to_wavelet", "wavelet_clip"]

_WDM = dict(
    spatial_dims=3,
    in_channels=8,
    model_channels=64,
    num_res_blocks=2,
    attention_resolutions=(),
    mid_attention=False,
    scale_shift_norm=False,
    resblock_updown=True,
    additive_skips=True,
    groups=32,
)

PRESETS: dict[str, dict] = {
    # image_size is the wavelet grid: half the volume's side.
    "wdm128": dict(_WDM, image_size=64, channel_mult=(1, 2, 2, 4, 4)),
    "wdm256": dict(_WDM, image_size=128, channel_mult=(1, 2, 2, 4, 4, 4)),
    "wdm128_text": dict(
        _WDM,
        image_size=64,
        channel_mult=(1, 2, 2, 4, 4),
        context_dim=768,
        cross_attention_resolutions=(32, 16, 8, 4),
        head_channels=64,
        num_mid_blocks=4,
        dropout=0.1,
        dropout_min_level=3,
    ),
    # A small volume model for tests and CPU runs (16^3 volumes -> 8^3 wavelet grid).
    "wdm_tiny": dict(_WDM, image_size=8, channel_mult=(1, 2), model_channels=16, groups=8),
    "wdm_tiny_text": dict(
        _WDM,
        image_size=8,
        channel_mult=(1, 2),
        model_channels=16,
        groups=8,
        context_dim=32,
        cross_attention_resolutions=(4,),
        head_channels=8,
        num_mid_blocks=3,
        dropout=0.1,
        dropout_min_level=1,
    ),
}
