"""The shared skeleton of every experiment config (configs/*.py start from it).

Groups: data (jaxcf.data.config), model (jaxcf.models.build), text (prompt encoder), vae
(frozen autoencoder of latent models), vae_loss, diffusion (schedule, space, condition,
objective), optim, train, sampler (preview samples), mesh, counterfactual (the method runner
and one sub-config per registered method),
eval (metrics over a split). Every field a command line may
override (--config.group.field=value) exists here, because configs are locked.
"""

from __future__ import annotations

import ml_collections

from jaxcf.counterfactual import registry
from jaxcf.data.config import default_data_config


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.data = default_data_config()

    # jaxcf.models.build: family, preset and constructor arguments overriding the preset.
    c.model = ml_collections.ConfigDict(
        {"family": "unet", "preset": "tiny2d", "dtype": "float32", "remat": False}
    )

    # Prompt encoder for diffusion.condition = "prompt" (vocab_size / max_len 0: from the data).
    c.text = ml_collections.ConfigDict(
        {
            "encoder": "trainable",
            "dim": 256,
            "depth": 2,
            "heads": 4,
            "max_len": 16,
            "vocab_size": 0,
            "file": "",
        }
    )

    # Frozen autoencoder for diffusion.space = "latent": a diffusers AutoencoderKL file or
    # folder, or a jaxcf workdir trained with configs/vae_brats.py. An empty checkpoint (an
    # untrained VAE, latents that mean nothing) is refused unless allow_untrained (smoke
    # runs). mode: per_modality (RGB VAE, each MRI modality replicated to 3 channels)
    # | joint | auto (per_modality when the VAE takes 3 channels).
    c.vae = ml_collections.ConfigDict(
        {"preset": "sd", "checkpoint": "", "mode": "auto", "allow_untrained": False}
    )
    c.vae_loss = ml_collections.ConfigDict({"kl_weight": 1e-6})

    c.diffusion = ml_collections.ConfigDict(
        {
            "schedule": "linear",  # linear | cosine | scaled_linear | rectified_flow
            "num_timesteps": 1000,
            "prediction": "eps",  # eps | x0 | v | flow
            "variance": "fixed_small",  # fixed_small | fixed_large | learned_range
            "shift": 1.0,  # rectified-flow time shift
            "space": "pixel",  # pixel | wavelet | latent
            "condition": "label",  # none | label | prompt
            "cond_drop_prob": 0.1,  # classifier-free guidance training
            "weighting": "",  # "" | min_snr | min_snr:<gamma>
            "t_distribution": "uniform",  # uniform | logit_normal (flow)
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
            "task": "diffusion",  # diffusion | vae
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
            "slices": "tumour",  # tumour (slices with a tumour voxel, as Diff-SCM) | all
            "max_items": 0,  # 0 = every slice of the split
            "methods": "diffscm,promptable",  # the FLAIR thresholding baseline always runs
            "num_bins": 10_000,  # streaming AUPRC / ideal-Dice histogram bins
        }
    )
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
    )
    c.model.update(
        family="wdm", preset="wdm128_text", image_size=64, in_channels=8, context_dim=256
    )
    c.text.update(encoder="trainable", dim=256, depth=2, heads=4)
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
