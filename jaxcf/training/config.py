"""The shared skeleton of every experiment config (configs/*.py start from it).

Groups: data (jaxcf.data.config), model (jaxcf.models.build), text (prompt encoder), vae
(frozen autoencoder of latent models), vae_loss, seg_loss and refiner (paper 002's
segmenters and refiner), diffusion (schedule, space, condition, objective), optim, train,
sampler (preview samples), mesh, counterfactual (the method runner and one sub-config per
registered method), eval (metrics over a split). Every field a command line may
override (--config.group.field=value) exists here, because configs are locked.

Every configs/NAME.py has ``get_config(arg=None)``: ``arg="toy"`` (``--config=FILE:toy``)
is the same experiment at its CPU-test size (apply_toy; big_vision's ``runlocal``). Fields
that must agree are derived, not copied: the model's spatial size and input channels are
FieldReferences to the data's (pixel_shape, wavelet_shape, latent_shape), so
``--config.data.image_size=64`` moves the model with it; setting a derived model field
explicitly still overrides it.
"""

from __future__ import annotations

import ml_collections

from jaxcf.counterfactual import registry
from jaxcf.data.config import default_data_config, derived, follow
from jaxcf.errors import InputError

TOY = "toy"


def is_toy(arg: str | None) -> bool:
    """get_config's argument: None / "" -> the experiment as published, "toy" -> its
    CPU-test size; anything else is a ValueError naming the allowed values."""
    if arg in (None, ""):
        return False
    if arg == TOY:
        return True
    raise InputError(
        f"unknown config argument {arg!r}: allowed are none (--config=configs/NAME.py, the "
        f"experiment as published) and {TOY!r} (--config=configs/NAME.py:{TOY}, its CPU-test "
        "size)"
    )


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = default_data_config()

    # jaxcf.models.build: family, preset and constructor arguments overriding the preset.
    # checkpoint: pretrained weights a fresh run starts from (jaxcf.models.pretrained: the
    # family's converter, e.g. SD 1.5's unet/ folder for sd_unet); "" = a random init.
    # checkpoint_out_channels: the checkpoint's output width when it differs from the
    # model's (a new head, e.g. MONAI's 3-channel BraTS Swin-UNETR fine-tuned to 4 classes).
    c.model = ml_collections.ConfigDict(
        {
            "family": "unet",
            "preset": "tiny2d",
            "dtype": "float32",
            "remat": False,
            "checkpoint": "",
            "checkpoint_out_channels": 0,
        }
    )

    # Prompt encoder for diffusion.condition = "prompt" (vocab_size 0: from the data's
    # tokenizer; max_len follows data.prompt_max_len).
    c.text = ml_collections.ConfigDict(
        {
            "encoder": "trainable",
            "dim": 256,
            "depth": 2,
            "heads": 4,
            "max_len": follow(c.data, "prompt_max_len"),
            "vocab_size": 0,
            "file": "",
            # encoder = "tower" (jaxcf.text.tower): a frozen pretrained BERT / CLIP run on
            # the fly; dim must be its width. data_vocab: the data tokenizer's words, which
            # jaxcf.train records from the prepared data.
            "checkpoint": "",
            "tower": "auto",
            "vocab": "",
            "tower_max_len": 64,
            "tower_heads": 0,
            "data_vocab": [],
        }
    )

    # Frozen autoencoder for diffusion.space = "latent": a diffusers AutoencoderKL file or
    # folder, or a jaxcf workdir trained with configs/vae_brats.py. An empty checkpoint (an
    # untrained VAE, latents that mean nothing) is refused unless allow_untrained (smoke
    # runs). mode: per_modality (RGB VAE, each MRI modality replicated to 3 channels)
    # | joint | auto (per_modality when the VAE takes 3 channels). scaling_factor: the
    # latents' scale (LDM's 1 / std of the training latents); 0 = the preset's (SD's
    # 0.18215), which fits the SD VAE only: measure a VAE of your own with
    # jaxcf.models.vae.estimate_scaling_factor.
    c.vae = ml_collections.ConfigDict(
        {
            "preset": "sd",
            "checkpoint": "",
            "mode": "auto",
            "allow_untrained": False,
            "scaling_factor": 0.0,
        }
    )
    c.vae_loss = ml_collections.ConfigDict({"kl_weight": 1e-6, "mask_weight": 0.0})
    # train.task = "segmentation" (paper 002's coarse segmenters): dice (Eq. 2) | dice_ce;
    # squared: Eq. 2's denominator sum(Y^2 + Yhat^2) instead of sum(Y + Yhat)
    c.seg_loss = ml_collections.ConfigDict({"kind": "dice", "squared": True})
    # train.task = "refiner" (paper 002 Sec. 3.3): coarse = the workdir of a trained
    # segmenter whose probabilities condition the refiner ("" = unconditional); Eq. 9's
    # boundary-weighted MSE weight and its class-edge weight w
    c.refiner = ml_collections.ConfigDict({"coarse": "", "mse_weight": 0.1, "edge_weight": 3.0})
    # train.task = "medsegdiff" (paper 002 Sec. 3.4; its prior is refiner.coarse's): Eq. 12's
    # gamma and the axial slices drawn from each 3-D crop
    c.medsegdiff = ml_collections.ConfigDict({"gamma": 10.0, "slices_per_crop": 8})

    c.diffusion = ml_collections.ConfigDict(
        {
            "schedule": "linear",  # linear | cosine | scaled_linear | rectified_flow
            "num_timesteps": 1000,
            "prediction": "eps",  # eps | x0 | v | flow
            "variance": "fixed_small",  # fixed_small | fixed_large | learned_range
            "shift": 1.0,  # rectified-flow time shift
            "space": "pixel",  # pixel | wavelet | latent
            "condition": "label",  # none | label | prompt | image (the image as condition)
            "target": "image",  # the batch entry diffused (e.g. seg: a segmentation model)
            "cond_drop_prob": 0.1,  # classifier-free guidance training
            "weighting": "",  # "" | min_snr | min_snr:<gamma>
            "t_distribution": "uniform",  # uniform | logit_normal (flow)
            "loss": "mse",  # mse | l1 (MAISI's latent UNets)
            "beta_start": 0.0,  # linear / scaled_linear betas; 0: the schedule's default
            "beta_end": 0.0,
        }
    )
    c.optim = ml_collections.ConfigDict(
        {
            "name": "adamw",
            "lr": 1e-4,
            "weight_decay": 0.0,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "warmup_steps": 0,
            "schedule": "constant",  # constant | cosine
            "min_lr_ratio": 0.0,
            "grad_clip": 1.0,  # 0 disables
            "ema_decay": 0.9999,
            "ema_warmup": True,
        }
    )
    c.train = ml_collections.ConfigDict(
        {
            # diffusion | vae | classifier | segmentation | refiner | medsegdiff
            "task": "diffusion",
            "num_steps": 1000,
            "log_every": 50,
            "checkpoint_every": 1000,
            "sample_every": 1000,  # 0 disables preview samples
            "preview_count": 4,
            "keep_checkpoints": 3,
            "seed": 0,
        }
    )
    c.sampler = ml_collections.ConfigDict({"num_steps": 50, "guidance_scale": 1.0})
    c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1})

    # Counterfactual methods (python -m jaxcf.counterfactual, jaxcf.evaluate, the demo): the
    # runner's settings here, each registered method's own under counterfactual.<name>.*
    # (jaxcf.counterfactual.registry; e.g. counterfactual.diffscm.strength).
    c.counterfactual = ml_collections.ConfigDict(
        {
            "method": "diffscm",  # a registered method: diffscm | promptable
            "batch_size": 32,  # rows per compiled chunk (rounded up to the mesh's devices)
            "seed": 0,
            "vote": "paper",  # mask post-processing vote: paper (>= 0.5) | script (> 0.25)
        }
    )
    c.counterfactual.update(registry.default_configs())
    # Evaluation over a split (python -m jaxcf.evaluate).
    c.eval = ml_collections.ConfigDict(
        {
            "split": "test",
            # all: every slice of the split, healthy ones included (Diff-SCM's "whole test
            # set", paper 001 Sec. 4; configs/diffscm_brats.py) | tumour: only slices with
            # a tumour voxel (an easier view: no healthy slice can give false positives)
            "slices": "tumour",
            # side of the evaluation grid: image and ground truth at this size, methods at
            # the model's (data.image_size), their maps resampled to it (Diff-SCM: 64 px
            # model, 128 px evaluation; docs/methods.md); 0 = the model's size
            "image_size": 0,
            "max_items": 0,  # 0 = every slice of the split
            # registered methods, comma-separated; METHOD:FIELD=VALUE sets that row's
            # counterfactual.METHOD.FIELD (promptable's default region is the ORACLE box;
            # region=heatmap_box is its non-oracle prompt). Thresholding always runs.
            "methods": "diffscm,promptable,promptable:region=heatmap_box",
            "num_bins": 10_000,  # streaming AUPRC / ideal-Dice histogram bins
            # evaluate --method=prompt_swap (paper 004 Sec. 3.2): synthetic subjects drawn
            # under the first category's prompt and swapped to every other one (the paper:
            # 333 per prompt), and Table 2's guidance-scale sweep (w = 1: the conditional model)
            "synthetic_subjects": 32,
            "guidance_scales": (1.0, 2.0, 3.0),
            # evaluate --method=attention (paper 003): each normal radiograph's target prompt,
            # {side} / {zone} filled with the six (side, zone) pairs in turn
            "target_template": "Moderate opacity in the {side} {zone} zone, concerning for "
            "pneumonia.",
            # ... and the words its ROI is read from, filled the same way; "" = the target
            # prompt's own cues. "{side} {zone} zone" with a target that names no zone asks
            # for a place the text does not give (the CLI's --roi=PNG)
            "roi_template": "",
        }
    )
    return c


# -- model fields derived from the data ------------------------------------------------------
# Each returns model fields as FieldReferences (c.model.update(**pixel_shape(c))): they follow
# the data fields on access, overrides included, and an explicit --config.model.FIELD=VALUE
# replaces the derivation for that field only.


def pixel_shape(c: ml_collections.ConfigDict) -> dict:
    """A pixel-space model sees the data as it comes: image_size = data.image_size,
    in_channels = data.channels."""
    return {
        "image_size": follow(c.data, "image_size"),
        "in_channels": follow(c.data, "channels"),
    }


def wavelet_shape(c: ml_collections.ConfigDict) -> dict:
    """WDM's model sees the 3-D Haar transform of the volumes: 8 sub-bands per channel on a
    grid of half the side (image_size = data.volume_size / 2, in_channels = 8 * channels)."""
    return {
        "image_size": c.data.get_ref("volume_size") // 2,
        "in_channels": c.data.get_ref("channels") * 8,
    }


def _vae_preset(name: str) -> dict:
    from jaxcf.models.vae import PRESETS

    if name not in PRESETS:
        raise InputError(f"vae.preset {name!r} is not a VAE preset; choose from {sorted(PRESETS)}")
    return PRESETS[name]


def vae_downsampling(preset: str) -> int:
    """Spatial downsampling of a VAE preset: 2 per level after the first (8 for sd, mri4)."""
    return 2 ** (len(_vae_preset(preset)["block_out_channels"]) - 1)


def latent_channels(channels: int, preset: str, mode: str) -> int:
    """Channels of the diffusion variable in latent space: per_modality (an RGB VAE, each
    modality encoded on its own, Shen et al. 2024) concatenates one latent per channel;
    joint encodes all channels at once. mode auto = per_modality for a 3-channel VAE."""
    vae = _vae_preset(preset)
    if mode == "auto":
        mode = "per_modality" if vae["in_channels"] == 3 else "joint"
    if mode not in ("per_modality", "joint"):
        raise InputError(f"vae.mode must be auto, per_modality or joint, got {mode!r}")
    return vae["latent_channels"] * (channels if mode == "per_modality" else 1)


def _latent_size(image_size: int, preset: str) -> int:
    return image_size // vae_downsampling(preset)


def latent_shape(c: ml_collections.ConfigDict) -> dict:
    """A latent DiT sees the frozen VAE's latents: input_size = data.image_size / the VAE's
    downsampling, in_channels = latent_channels(data.channels, vae.preset, vae.mode); both
    follow vae.preset and vae.mode too."""
    preset = c.vae.get_ref("preset")
    return {
        "input_size": derived(_latent_size, c.data.get_ref("image_size"), preset),
        "in_channels": derived(
            latent_channels, c.data.get_ref("channels"), preset, c.vae.get_ref("mode")
        ),
    }


# -- the toy switch ----------------------------------------------------------------------------


def apply_toy(c: ml_collections.ConfigDict, **model) -> ml_collections.ConfigDict:
    """Shrinks an experiment config to its CPU-test size in place and returns it: 16 px
    slices and 16^3 volumes of 4 small procedural phantom cases, batch 2, one device, a small prompt
    encoder, 10 training steps without preview samples, 10 steps for every counterfactual
    method and the sampler, few evaluation items. The model's sizes follow the data (they are
    derived); `model` sets model fields, e.g. a tiny preset: apply_toy(c, preset="tiny2d")."""
    c.data.update(image_size=16, volume_size=16, crop_size=16, batch_size=2)
    c.data.phantom.update(cases=4, size=32, anatomy="procedural")  # the fast geometric heads
    c.text.update(dim=32, depth=1, heads=2)
    c.train.update(num_steps=10, log_every=1, checkpoint_every=10, sample_every=0, preview_count=2)
    c.sampler.num_steps = 10
    c.mesh.update(data=1, fsdp=1)
    c.counterfactual.batch_size = 4
    for name in registry.names():
        if "num_steps" in c.counterfactual[name]:
            c.counterfactual[name].num_steps = 10
    c.eval.max_items = 8
    c.model.update(model)
    return c


def phantom32_data(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data of paper 004's phantom proof (the phantom32 variants of configs/wdm_ms.py,
    classifier_ms.py, vae3d_ms.py, rflow_ms.py), on top of apply_toy: 48 procedural MS
    phantoms rendered at 32^3, batch 4: every variant renders the same phantoms (checked in
    tests/test_classifier.py). Each workdir renders and prepares its own copy."""
    c.data.update(volume_size=32, batch_size=4)
    c.data.phantom.update(size=32, cases=48)
    return c


def cxr_phantom64_data(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data of paper 003's phantom proof (configs/vae_cxr.py, configs/sd_cxr.py:phantom64):
    480 procedural CXR phantoms at 64 px, 40% normal, batch 16; both render the same
    phantoms (same seed, cases and size). Each workdir renders and prepares its own copy."""
    c.data.update(dataset="cxr", task="cxr", image_size=64, batch_size=16)
    c.data.phantom.update(cases=480, size=64, anatomy="procedural", tumour_free_fraction=0.4)
    return c


def language_wdm_config(dataset: str) -> ml_collections.ConfigDict:
    """Language-guided 3-D wavelet diffusion (Mohamed et al. 2025) on MS lesion load
    (minimal / moderate / high) or ADNI diagnosis (CN / MCI / AD): configs/wdm_ms.py and
    configs/wdm_adni.py.

    WDM (Friedrich et al. 2024) on 128^3 volumes in the Haar wavelet domain, x0-prediction,
    1000 linear steps, with Simple Diffusion's deeper bottleneck, low-resolution dropout and
    cross-attention to prompt tokens at several scales; null prompt 20% of the time;
    class-balanced sampling; batch 1; AdamW 1e-5 (WDM); DDIM 25 steps for samples.

    The prompt encoder is, for now, a small transformer trained with the model on the
    dataset's own prompts (text.encoder = "trainable") or embeddings read from a file
    (text.encoder = "file", text.file = PATH): pretrained BiomedCLIP comes later."""
    c = base_config()
    c.data.update(
        dataset=dataset,
        task="volumes",
        volume_size=128,
        batch_size=1,
        balanced=True,
        prompt_max_len=16,
        # wdm-3d trains on volumes renormalised to [-1, 1] (--renormalize=True: 2x - 1), the
        # range its clip_denoised and the wavelet space's wavelet_clip clamp the x0 estimate to.
        value_range=(-1.0, 1.0),
    )
    c.text.update(encoder="trainable", dim=256, depth=2, heads=4)
    # 128^3 volumes -> a 64^3 wavelet grid of 8 sub-bands; cross-attention to the prompt
    # encoder's tokens.
    c.model.update(
        family="wdm",
        preset="wdm128_text",
        context_dim=follow(c.text, "dim"),
        **wavelet_shape(c),
    )
    c.diffusion.update(
        schedule="linear",
        prediction="x0",
        variance="fixed_small",
        space="wavelet",
        condition="prompt",
        cond_drop_prob=0.2,
    )
    c.optim.update(lr=1e-5, weight_decay=0.0, grad_clip=1.0)
    c.train.update(
        num_steps=1_000_000, checkpoint_every=10_000, sample_every=10_000, preview_count=1
    )
    c.sampler.update(num_steps=25, guidance_scale=1.0)
    return c


# -- paper 004's latent baselines: MAISI RFlow and MAISI Linear --------------------------------

# MAISI's resolution-dependent time shift is relative to a 32^3 latent (MONAI RFlowScheduler's
# base_img_size_numel = 32 * 32 * 32; REFERENCES.md "MAISI rectified flow").
MAISI_BASE_LATENT = 32
# The latent schedules of paper 004's MAISI baselines (Mohamed et al. 2025, Sec. 2.2).
MAISI_SCHEDULES = ("rflow", "linear")


def latent_volume_shape(c: ml_collections.ConfigDict) -> dict:
    """A 3-D latent UNet sees the frozen 3-D VAE's latents of the volumes: image_size =
    data.volume_size / the VAE's downsampling (4 for mri3d), in_channels =
    latent_channels(data.channels, vae.preset, vae.mode); all follow their fields."""
    preset = c.vae.get_ref("preset")
    return {
        "image_size": derived(_latent_size, c.data.get_ref("volume_size"), preset),
        "in_channels": derived(
            latent_channels, c.data.get_ref("channels"), preset, c.vae.get_ref("mode")
        ),
    }


def maisi_shift(volume_size: int, preset: str, base_latent: int) -> float:
    """MAISI's rectified-flow time shift for cubes of side volume_size through the VAE
    `preset`: (latent numel / base_latent^3) ** (1/3) (MONAI timestep_transform, scale 1)."""
    from jaxcf.diffusion.schedules import resolution_shift

    side = _latent_size(volume_size, preset)
    return resolution_shift((side,) * 3, (base_latent,) * 3)


def maisi_vae_config(dataset: str) -> ml_collections.ConfigDict:
    """The frozen 3-D autoencoder of the MAISI baselines (paper 004 builds on MAISI, Guo et
    al. 2025): configs/vae3d_ms.py. An AutoencoderKL on whole one-channel volumes (data task
    "volumes", 128^3 in [-1, 1] as the WDM configs), preset mri3d: 4 latent channels at 1/4
    resolution per axis, 2 ResBlocks per level, no attention (MAISI's VAE layout; its
    widths are 64, 128, 256, mri3d's are half). L1 + 1e-7 KL, AdamW 1e-4, batch 1 (MAISI's
    VAE training config; its perceptual 0.3 and adversarial 0.1 terms are not in jaxcf).
    The latent configs rebuild the VAE from vae.preset alone, so keep the preset as is."""
    c = base_config()
    c.train.task = "vae"
    c.data.update(
        dataset=dataset,
        task="volumes",
        volume_size=128,
        batch_size=1,
        prompt_max_len=16,
        value_range=(-1.0, 1.0),
    )
    # Reconstructs the volume's channels: in and out channels = data.channels.
    c.model.update(
        family="vae",
        preset="mri3d",
        in_channels=follow(c.data, "channels"),
        out_channels=follow(c.data, "channels"),
    )
    c.vae_loss.kl_weight = 1e-7
    c.optim.update(lr=1e-4, weight_decay=0.0, ema_decay=0.999)
    c.train.update(num_steps=100_000, checkpoint_every=5_000, sample_every=5_000, preview_count=1)
    return c


def maisi_latent_config(dataset: str, schedule: str) -> ml_collections.ConfigDict:
    """Paper 004's latent baselines (Mohamed et al. 2025, Sec. 2.2, Table 1) on MS lesion load
    or ADNI diagnosis: a text-conditioned 3-D UNet in the latent space of a frozen MAISI-style
    VAE (configs/vae3d_ms.py, vae.checkpoint = its workdir). configs/rflow_ms.py,
    rflow_adni.py and linear_ms.py.

    Data as the WDM configs (128^3 volumes in [-1, 1], class-balanced, batch 1, null prompt
    20% of the time), so 32^3 x 4 latents. The UNet is MAISI's diffusion UNet: widths 64,
    128, 256, 512, 2 ResBlocks per level, self-attention at the two lowest levels (8^3, 4^3)
    with 32-channel heads, ResBlock up/downsampling, additive time embedding; plus
    cross-attention to the prompt tokens at every level (paper 004 Sec. 2.2 (iii)).
    AdamW 1e-4 (MAISI's diffusion training).

    schedule "rflow" (MAISI RFlow; MONAI RFlowScheduler as MAISI configures it): rectified
    flow x_t = (1 - t) x0 + t eps with continuous t, 1000 training timesteps, velocity
    target, t drawn uniform (diffusion.t_distribution = logit_normal is the other MONAI
    option), shifted by MAISI's resolution-dependent transform (diffusion.shift follows
    data.volume_size: (latent numel / 32^3)^(1/3), 1 for 32^3 latents); Euler sampling with
    30 steps. schedule "linear" (MAISI Linear): 1000-step DDPM, eps-prediction, MAISI's
    released DDPM betas (MONAI scaled_linear_beta 0.0015 -> 0.0195: jaxcf's scaled_linear
    with those ends); deterministic DDIM over all 1000 steps (the paper samples its latent
    models with 1000 DDPM steps). Both train with an L1 loss on the network's target
    (MAISI's diff_model_train: torch.nn.L1Loss)."""
    if schedule not in MAISI_SCHEDULES:
        raise InputError(f"MAISI schedule must be one of {MAISI_SCHEDULES}, got {schedule!r}")
    c = base_config()
    c.data.update(
        dataset=dataset,
        task="volumes",
        volume_size=128,
        batch_size=1,
        balanced=True,
        prompt_max_len=16,
        value_range=(-1.0, 1.0),
    )
    c.text.update(encoder="trainable", dim=256, depth=2, heads=4)
    c.vae.update(preset="mri3d", checkpoint="", mode="joint")
    c.model.update(
        family="unet",
        preset="",
        spatial_dims=3,
        model_channels=64,
        channel_mult=(1, 2, 4, 8),
        num_res_blocks=2,
        attention_resolutions=(8, 4),
        head_channels=32,
        context_dim=follow(c.text, "dim"),
        cross_attention_resolutions=(32, 16, 8, 4),
        mid_attention=True,
        scale_shift_norm=False,
        resblock_updown=True,
        dropout=0.0,
        groups=32,
        **latent_volume_shape(c),
    )
    c.diffusion.update(
        space="latent", condition="prompt", cond_drop_prob=0.2, num_timesteps=1000, loss="l1"
    )
    if schedule == "rflow":
        # MONAI's timestep_transform is applied to training draws and to the sampling grid
        # alike; jaxcf's schedule.shift does both (tests/test_rflow_maisi.py).
        c.diffusion.base_latent_size = MAISI_BASE_LATENT
        c.diffusion.update(
            schedule="rectified_flow",
            prediction="flow",
            t_distribution="uniform",
            shift=derived(
                maisi_shift,
                c.data.get_ref("volume_size"),
                c.vae.get_ref("preset"),
                c.diffusion.get_ref("base_latent_size"),
                field_type=float,
            ),
        )
        steps = 30  # MAISI's rectified-flow inference (REFERENCES.md: 30 Euler steps)
    else:
        c.diffusion.update(
            schedule="scaled_linear",
            beta_start=0.0015,
            beta_end=0.0195,
            prediction="eps",
            variance="fixed_small",
        )
        steps = 1000  # paper 004 Sec. 3.1: 1000 denoising steps for the latent models
    c.optim.update(lr=1e-4, weight_decay=0.0, grad_clip=1.0)
    c.train.update(
        num_steps=1_000_000, checkpoint_every=10_000, sample_every=10_000, preview_count=1
    )
    c.sampler.update(num_steps=steps, guidance_scale=1.0)
    c.counterfactual.prompt_swap.num_steps = steps
    if dataset == "adni":
        c.counterfactual.prompt_swap.update(
            source_prompt="Subject is cognitively normal",
            target_prompt="Subject has Alzheimer's disease",
        )
    return c


def maisi_latent_toy(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The CPU-test size of maisi_latent_config: apply_toy (16^3 volumes -> 4^3 x 4 latents
    of the mri3d VAE) and a tiny 3-D text UNet (16 channels, levels 4^3 and 2^3, cross-
    attention at both, self-attention at 2^3); like configs/pcf_dit_brats.py:toy it accepts
    an empty vae.checkpoint (an untrained VAE: smoke runs); give the toy VAE's workdir with
    --config.vae.checkpoint=WORKDIR (configs/vae3d_ms.py:toy) for latents that mean something."""
    apply_toy(
        c,
        model_channels=16,
        channel_mult=(1, 2),
        num_res_blocks=1,
        attention_resolutions=(2,),
        head_channels=8,
        cross_attention_resolutions=(4, 2),
        groups=8,
    )
    c.vae.allow_untrained = True
    return c


def num_labels(dataset: str) -> int:
    """The classes of a dataset's labels (MS lesion load and ADNI diagnosis: 3, BraTS
    tumour / healthy and CXR opacity: 2); a classifier's num_classes derives from it."""
    from jaxcf.training.previews import LABEL_NAMES

    if dataset not in LABEL_NAMES:
        raise InputError(f"data.dataset must be one of {', '.join(LABEL_NAMES)}, got {dataset!r}")
    return len(LABEL_NAMES[dataset])


def segmentation_config(
    family: str, preset: str, batch_size: int, in_channels=None
) -> ml_collections.ConfigDict:
    """Paper 002's coarse segmenters (configs/resunet_peds.py, configs/swinunetr_peds.py;
    train.task = "segmentation", Table 1): BraTS-PEDs volumes (four sequences, foreground-
    cropped, z-scored; the seg3d pipeline), random 96^3 crops centred on tumour half of the
    time, flips, rot90 and intensity jitter, the four classes (background, NC, ED, ET) from
    the label map, Soft Dice (Eq. 2), AdamW 1e-4 with weight decay 1e-5 at a constant rate,
    no EMA (the paper keeps the best validation checkpoint; ema_decay 0 keeps the weights).
    in_channels: in_channels(c) -> the model's input channels (a FieldReference derived from
    c's fields); default: the data's channels."""
    c = base_config()
    c.train.task = "segmentation"
    c.data.update(
        dataset="brats-peds", task="seg3d", augment=True, crop_size=96, batch_size=batch_size
    )
    c.model.update(
        family=family,
        preset=preset,
        in_channels=in_channels(c) if in_channels else follow(c.data, "channels"),
        out_channels=4,  # jaxcf.segmentation.labels.NUM_CLASSES
    )
    c.optim.update(lr=1e-4, weight_decay=1e-5, grad_clip=0.0, ema_decay=0.0, ema_warmup=False)
    c.train.update(num_steps=50_000, log_every=50, checkpoint_every=2_000, sample_every=0)
    return c


def refiner_channels(channels: int, coarse: str) -> int:
    """[I; Y_t] (channels + 4 classes) or, with a coarse model, [I; Y_t; C] (+ 4 more)."""
    return int(channels) + 4 * (2 if coarse else 1)


def refiner_in_channels(c: ml_collections.ConfigDict):
    """The refiner's model.in_channels, following data.channels and refiner.coarse
    (configs/refiner_peds.py; segmentation_config's in_channels argument)."""
    return derived(refiner_channels, c.data.get_ref("channels"), c.refiner.get_ref("coarse"))


def has_prior(coarse: str) -> bool:
    """MedSegDiff's model.prior: a coarse segmenter is named (configs/medsegdiff_peds.py)."""
    return bool(coarse)


def peds_phantom48_data(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The data of paper 002's phantom proof (configs/resunet_peds.py:phantom48 and
    configs/refiner_peds.py:phantom48), on top of apply_toy: 60 BraTS-PEDs phantoms (MNI152
    anatomy) at 48^3, a tenth tumour-free, 32^3 training crops, batch 4; both render the
    same phantoms (same seed, cases and size)."""
    c.data.update(dataset="brats-peds", task="seg3d", crop_size=32, batch_size=4)
    c.data.phantom.update(cases=60, size=48, anatomy="mni152", tumour_free_fraction=0.1)
    return c


def classifier_config(dataset: str) -> ml_collections.ConfigDict:
    """Paper 004's text-alignment judge: a 3-D DenseNet-121 classifying the MS lesion-load
    category (minimal / moderate / high) or the ADNI diagnosis (CN / MCI / AD) of a volume
    (configs/classifier_ms.py, configs/classifier_adni.py; train.task = "classifier").

    Its data are the language-guided WDM's (language_wdm_config): the same 128^3 volumes in
    [-1, 1], prepared with the same parameters, so the judge sees real volumes exactly as
    the generator does and its shards can be shared (--config.data.prepared=...). The
    paper gives no training recipe for the classifier; jaxcf's: cross-entropy,
    class-balanced batches of 4 (GroupNorm: jaxcf.models.densenet), AdamW 1e-4, weight
    decay 1e-5, EMA 0.999, 20k steps. The paper reports 96.5% (MS, low vs high) and 83.3%
    (ADNI, CN vs AD) on held-out real scans; jaxcf's judge has all three classes."""
    c = base_config()
    c.train.task = "classifier"
    c.data.update(
        dataset=dataset,
        task="volumes",
        volume_size=128,
        batch_size=4,
        balanced=True,
        prompt_max_len=16,
        value_range=(-1.0, 1.0),
    )
    c.model.update(
        family="densenet",
        preset="densenet121_3d",
        image_size=follow(c.data, "volume_size"),
        in_channels=follow(c.data, "channels"),
        num_classes=derived(num_labels, c.data.get_ref("dataset")),
    )
    c.optim.update(lr=1e-4, weight_decay=1e-5, grad_clip=1.0, ema_decay=0.999)
    c.train.update(num_steps=20_000, log_every=50, checkpoint_every=2_000, sample_every=0)
    return c
