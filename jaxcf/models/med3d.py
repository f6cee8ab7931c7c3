"""Med3D: the 3-D ResNets of MedicalNet (Chen, Ma & Zheng 2019, "Med3D: Transfer learning for
3D medical image analysis", arXiv:1904.00625), a frozen feature extractor for 3-D FID
(paper 004 reports FID on Med3D features).

Architecture (github Tencent/MedicalNet, models/resnet.py), channels-last:

* stem: conv 7^3 stride 2 (padding 3, no bias) -> BatchNorm -> ReLU -> max-pool 3^3 stride 2
  (padding 1, -inf padding as torch);
* layer1..layer4 of BasicBlocks (resnet10/18/34: two 3^3 convs) or Bottlenecks (resnet50+:
  1^3 -> 3^3 -> 1^3 with 4x expansion), widths 64, 128, 256, 512; the first block of a layer
  carries the stride and a shortcut when the shape changes: type "B" = 1^3 conv + BatchNorm,
  type "A" = subsample + zero channel padding (MedicalNet's pretrained resnet18 / 34);
* MedicalNet keeps layers 3-4 at stride 1 and dilates their 3^3 convs by 2 and 4
  (`dilated=True`, output stride 8); MONAI's `monai.networks.nets.ResNet` has the same
  parameters but strides 2 there instead (`dilated=False`, output stride 32);
* features: global average pool of layer4's output, (B, 512) for BasicBlocks and (B, 2048) for
  Bottlenecks (widths[3] * expansion). MedicalNet's segmentation head (`conv_seg`) and MONAI's
  classifier (`fc`) are not part of the extractor.

BatchNorm runs in inference mode only: the running statistics are constants (nnx.BatchStat),
never updated. Parameter names follow torch's (conv1, bn1, layer{i}[j].conv{k} / bn{k} /
downsample_conv / downsample_bn), so jaxcf.convert.medicalnet maps checkpoints key by key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from jaxcf.errors import InputError
from jaxcf.models import conv3d, init

Dtype = Any
BlockType = Literal["basic", "bottleneck"]
EXPANSION = {"basic": 1, "bottleneck": 4}
# MedicalNet's depths: block type and blocks per layer (models/resnet.py resnet10 ... resnet200).
DEPTHS: dict[int, tuple[BlockType, tuple[int, int, int, int]]] = {
    10: ("basic", (1, 1, 1, 1)),
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
    200: ("bottleneck", (3, 24, 36, 3)),
}


@dataclasses.dataclass(frozen=True)
class Med3DConfig:
    """Sizes of a Med3D ResNet. `widths` are the per-layer planes (the stem has widths[0]);
    `dilated` selects MedicalNet's layers 3-4 (stride 1, dilation 2 / 4) over MONAI's
    (stride 2); `downsample_bias` adds a bias to type-B shortcut convs (MONAI's default for
    its own ResNet; MedicalNet has none)."""

    block: BlockType = "basic"
    layers: tuple[int, int, int, int] = (1, 1, 1, 1)
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)
    in_channels: int = 1
    shortcut: Literal["A", "B"] = "B"
    downsample_bias: bool = False
    dilated: bool = True
    stem_kernel: int = 7
    stem_stride: int = 2
    bn_eps: float = 1e-5

    def __post_init__(self):
        if self.block not in EXPANSION:
            raise InputError(f"Med3DConfig.block: 'basic' or 'bottleneck', got {self.block!r}")
        if self.shortcut not in ("A", "B"):
            raise InputError(f"Med3DConfig.shortcut: 'A' or 'B', got {self.shortcut!r}")
        if len(self.layers) != 4 or len(self.widths) != 4 or min(self.layers) < 1:
            raise InputError(
                f"Med3DConfig: 4 layers of >= 1 block and 4 widths, got layers={self.layers} "
                f"widths={self.widths}"
            )

    @property
    def feature_dim(self) -> int:
        """Length of the pooled feature vector (512 for resnet10/18/34, 2048 for resnet50)."""
        return self.widths[3] * EXPANSION[self.block]

    @property
    def name(self) -> str:
        """'Med3D resnet50', with the widths when they are not MedicalNet's."""
        depth = next(
            (d for d, (b, n) in DEPTHS.items() if (b, n) == (self.block, self.layers)), None
        )
        arch = f"resnet{depth}" if depth else f"resnet({self.block}, {self.layers})"
        extra = [] if self.widths == (64, 128, 256, 512) else [f"widths {self.widths}"]
        extra += [] if self.dilated else ["MONAI strides"]
        return f"Med3D {arch}" + (f" [{'; '.join(extra)}]" if extra else "")


def medicalnet_config(depth: int, **overrides: Any) -> Med3DConfig:
    """The configuration of MedicalNet's resnet{depth} checkpoints; shortcut type A for 18 and
    34, B otherwise (MedicalNet README, "resnet_18_23dataset.pth: --resnet_shortcut A")."""
    if depth not in DEPTHS:
        raise InputError(f"Med3D depth: one of {sorted(DEPTHS)}, got {depth}")
    block, layers = DEPTHS[depth]
    base = dict(block=block, layers=layers, shortcut="A" if depth in (18, 34) else "B")
    return Med3DConfig(**{**base, **overrides})


def _conv(
    cin: int,
    cout: int,
    kernel: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    bias: bool = False,
    dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A torch-style 3-D conv (symmetric padding dilation * (kernel // 2)); MedicalNet's
    kaiming-normal fan-out init, drawn on the host (jaxcf.models.init)."""
    pad = dilation * (kernel // 2)
    return nnx.Conv(
        cin,
        cout,
        (kernel,) * 3,
        strides=(stride,) * 3,
        padding=((pad, pad),) * 3,  # a tuple: GraphDefs must hash (jit static)
        kernel_dilation=(dilation,) * 3,
        use_bias=bias,
        kernel_init=init.normal(math.sqrt(2.0 / (cout * kernel**3))),
        dtype=dtype,
        conv_general_dilated=conv3d.conv_general_dilated,
        rngs=rngs,
    )


def _bn(channels: int, eps: float, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # Inference mode only: y = (x - running_mean) / sqrt(running_var + eps) * scale + bias,
    # in float32 whatever the conv dtype.
    return nnx.BatchNorm(
        channels, use_running_average=True, epsilon=eps, dtype=jnp.float32, rngs=rngs
    )


class Block(nnx.Module):
    """BasicBlock (conv3 -> BN -> ReLU -> conv3 -> BN) or Bottleneck (conv1 -> conv3 ->
    conv1, 4x expansion) plus shortcut, then ReLU; (B, D, H, W, cin) -> (B, D', H', W',
    planes * expansion)."""

    def __init__(
        self,
        cin: int,
        planes: int,
        config: Med3DConfig,
        *,
        stride: int = 1,
        dilation: int = 1,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        self.bottleneck = config.block == "bottleneck"
        cout = planes * EXPANSION[config.block]
        eps = config.bn_eps
        if self.bottleneck:
            self.conv1 = _conv(cin, planes, 1, dtype=dtype, rngs=rngs)
            self.conv2 = _conv(
                planes, planes, 3, stride=stride, dilation=dilation, dtype=dtype, rngs=rngs
            )
            self.conv3 = _conv(planes, cout, 1, dtype=dtype, rngs=rngs)
            self.bn3 = _bn(cout, eps, rngs)
        else:
            self.conv1 = _conv(
                cin, planes, 3, stride=stride, dilation=dilation, dtype=dtype, rngs=rngs
            )
            self.conv2 = _conv(planes, planes, 3, dilation=dilation, dtype=dtype, rngs=rngs)
        self.bn1 = _bn(planes, eps, rngs)
        self.bn2 = _bn(planes, eps, rngs)
        reshape = stride != 1 or cin != cout
        type_b = reshape and config.shortcut == "B"
        self.stride = stride
        self.pad_channels = cout - cin if reshape and not type_b else 0
        self.downsample_conv = (
            _conv(cin, cout, 1, stride=stride, bias=config.downsample_bias, dtype=dtype, rngs=rngs)
            if type_b
            else None
        )
        self.downsample_bn = _bn(cout, eps, rngs) if type_b else None

    def _shortcut(self, x: jax.Array) -> jax.Array:
        if self.downsample_conv is not None:
            return self.downsample_bn(self.downsample_conv(x))
        if self.stride != 1 or self.pad_channels:
            # Type A (MedicalNet downsample_basic_block): avg_pool3d(kernel 1, stride s) is a
            # subsample, then zero channels up to the block's width.
            s = self.stride
            x = x[:, ::s, ::s, ::s]
            return jnp.pad(x, [(0, 0)] * 4 + [(0, self.pad_channels)])
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        if self.bottleneck:
            h = self.bn3(self.conv3(jax.nn.relu(h)))
        return jax.nn.relu(h + self._shortcut(x).astype(h.dtype))


def max_pool3(x: jax.Array) -> jax.Array:
    """torch MaxPool3d(kernel 3, stride 2, padding 1) on (B, D, H, W, C): padded cells are
    -inf, so they never win."""
    window, strides = (1, 3, 3, 3, 1), (1, 2, 2, 2, 1)
    pads = ((0, 0), (1, 1), (1, 1), (1, 1), (0, 0))
    return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pads)


class Med3D(nnx.Module):
    """Med3D ResNet feature extractor: (B, D, H, W, in_channels) -> (B, feature_dim) float32.

    Parameters are float32; `dtype` is the conv compute dtype (bf16 on accelerators);
    BatchNorm, pooling and the feature average run in float32.
    """

    def __init__(self, config: Med3DConfig, *, dtype: Dtype = None, rngs: nnx.Rngs):
        self.config = config
        w = config.widths
        self.conv1 = _conv(
            config.in_channels,
            w[0],
            config.stem_kernel,
            stride=config.stem_stride,
            dtype=dtype,
            rngs=rngs,
        )
        self.bn1 = _bn(w[0], config.bn_eps, rngs)
        # MedicalNet resnet.py: layer3 (stride 1, dilation 2), layer4 (stride 1, dilation 4)
        # keep 1/8 resolution; MONAI strides by 2 there instead.
        plan = [(1, 1), (2, 1)] + ([(1, 2), (1, 4)] if config.dilated else [(2, 1), (2, 1)])
        cin = w[0]
        for i, (planes, blocks, (stride, dilation)) in enumerate(
            zip(w, config.layers, plan, strict=True)
        ):
            layer = []
            for j in range(blocks):
                layer.append(
                    Block(
                        cin,
                        planes,
                        config,
                        stride=stride if j == 0 else 1,
                        dilation=dilation,
                        dtype=dtype,
                        rngs=rngs,
                    )
                )
                cin = planes * EXPANSION[config.block]
            setattr(self, f"layer{i + 1}", nnx.List(layer))

    def feature_map(self, x: jax.Array) -> jax.Array:
        """(B, D, H, W, C) -> layer4's output (B, D/8, H/8, W/8, feature_dim) (MedicalNet
        layout; D/32 with MONAI's strides), float32."""
        if x.ndim != 5 or x.shape[-1] != self.config.in_channels:
            raise InputError(
                f"Med3D: expected channels-last volumes (B, D, H, W, {self.config.in_channels}),"
                f" got shape {x.shape}"
            )
        h = jax.nn.relu(self.bn1(self.conv1(x)))
        h = max_pool3(h)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                h = block(h)
        return h.astype(jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        """(B, D, H, W, C) -> (B, feature_dim): the global average of layer4's output, the
        feature vector 3-D FID compares."""
        return self.feature_map(x).mean(axis=(1, 2, 3))


def build_med3d(config: Med3DConfig | int = 50, *, seed: int = 0, dtype: Dtype = None) -> Med3D:
    """A randomly initialised Med3D (MedicalNet's init); an int picks medicalnet_config(depth)."""
    config = medicalnet_config(config) if isinstance(config, int) else config
    return Med3D(config, dtype=dtype, rngs=nnx.Rngs(seed))


__all__ = [
    "DEPTHS",
    "Block",
    "Med3D",
    "Med3DConfig",
    "build_med3d",
    "max_pool3",
    "medicalnet_config",
]
