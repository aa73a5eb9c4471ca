"""SeVa pairs: chosen = the model's answer on the image, rejected = its answer on the image
corrupted by diffusion noise; and that noise, which POVID's second stage uses too.

SeVa ("Self-supervised Visual Preference Alignment") builds the *rejected* response by asking
the model about an augmented image; its strongest augmentation is the forward diffusion process
of VCD (Leng et al. 2024), which SeVa's and POVID's code reuse:

    x_t = sqrt(ᾱ_t) · x_0 + sqrt(1 − ᾱ_t) · ε,   ε ~ N(0, I),   ᾱ_t = ∏_{s=0..t} (1 − β_s)

with T = 1000 steps and a *sigmoid* β schedule, β_s = sigmoid(linspace(−6, 6, T)_s) ·
(5e-3 − 1e-5) + 1e-5 (so ᾱ_500 ≈ 0.745, ᾱ_999 ≈ 0.081), applied to the image tensor the vision
tower sees: pixels in [0, 1] normalised with the CLIP mean/std (LLaVA-1.5's processor). The
step indexes the cumulative product from 0 exactly as that code does (``alphas_bar_sqrt[t]``),
so ``step=500`` here is SeVa's ``noise_step=500`` (its default). The DDPM linear schedule
(1e-4 → 0.02) is available as ``schedule="linear"``; it is far stronger at the same step.

:func:`build_seva_pairs` takes both answers as given
(:func:`visalign.methods.pairs.build.build_method_pairs` generates them, noising the images
with :func:`diffusion_noise`). Pairs identical after normalisation are skipped and counted.

Departures (documented): the result must be a viewable image, so x_t is mapped back to pixels
(un-normalised), clipped to [0, 255] and quantised to 8-bit RGB, where SeVa feeds the
un-clipped float tensor to the vision tower; and the noise is drawn at the image's stored
resolution, so a processor that later downsizes the image averages part of it away (resize the
image to the model's input size first to match SeVa exactly; ``visalign pairs`` does this with
``noise_resize``). DPO scores both responses on the original image (the noised image is only
recorded, as ``rejected_image``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from visalign.data.llava import first_exchange
from visalign.methods.pairs.common import (answer_map, check_record, make_pair,
                                           normalize_response, rejected_image_map)

__all__ = ["linear_betas", "sigmoid_betas", "betas", "alpha_bar", "diffusion_noise",
           "SEVA_NOISE_STEP", "CLIP_MEAN", "CLIP_STD", "build_seva_pairs"]


# ---------------------------------------------------------------------------------------------
# Diffusion noise
# ---------------------------------------------------------------------------------------------

SEVA_NOISE_STEP = 500
NUM_STEPS = 1000
# OpenAI CLIP normalisation (LLaVA-1.5's image processor), per RGB channel.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def linear_betas(num_steps: int = NUM_STEPS, beta_start: float = 1e-4, beta_end: float = 0.02
                 ) -> np.ndarray:
    """DDPM's β_0..β_{T-1}, linearly spaced (float64, shape ``(num_steps,)``)."""
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def sigmoid_betas(num_steps: int = NUM_STEPS, beta_start: float = 1e-5, beta_end: float = 5e-3
                  ) -> np.ndarray:
    """VCD/SeVa's β: ``sigmoid(linspace(-6, 6, T)) * (beta_end - beta_start) + beta_start``."""
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_steps, dtype=np.float64)))
    return s * (beta_end - beta_start) + beta_start


def betas(schedule: str = "sigmoid", num_steps: int = NUM_STEPS) -> np.ndarray:
    """The β schedule by name: ``"sigmoid"`` (VCD/SeVa/POVID, default) or ``"linear"`` (DDPM)."""
    if schedule == "sigmoid":
        return sigmoid_betas(num_steps)
    if schedule == "linear":
        return linear_betas(num_steps)
    raise ValueError(f"unknown noise schedule {schedule!r}; valid: sigmoid, linear")


def alpha_bar(step: int, num_steps: int = NUM_STEPS, schedule: str = "sigmoid") -> float:
    """ᾱ_t = ∏_{s=0..t} (1 − β_s) for ``0 <= step < num_steps``; decreasing in t."""
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
        raise TypeError(f"noise step must be an integer, got {step!r}")
    if not 0 <= step < num_steps:
        raise ValueError(f"noise step must be in [0, {num_steps - 1}], got {step}")
    return float(np.prod(1.0 - betas(schedule, num_steps)[: step + 1]))


def diffusion_noise(image: Image.Image, step: int = SEVA_NOISE_STEP, seed: int = 0, *,
                    num_steps: int = NUM_STEPS, schedule: str = "sigmoid",
                    mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD
                    ) -> Image.Image:
    """Forward-diffuse ``image`` to step ``step`` with Gaussian noise drawn from ``seed``.

    Pure: the same (image, step, seed) gives the same pixels; a larger step gives a noisier
    image (ᾱ_t decreases). The noise is added in the normalised space ``(x/255 - mean) / std``
    (x_t as above), then mapped back to pixels. Returns a new RGB image of the same size.
    """
    ab = alpha_bar(step, num_steps, schedule)
    m = np.asarray(mean, dtype=np.float64)
    s = np.asarray(std, dtype=np.float64)
    x = (np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0 - m) / s   # (H, W, 3)
    eps = np.random.default_rng(seed).standard_normal(x.shape)
    xt = np.sqrt(ab) * x + np.sqrt(1.0 - ab) * eps
    out = np.clip((xt * s + m) * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(out)  # (H, W, 3) uint8 -> RGB


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------

def build_seva_pairs(records: Sequence[Mapping], answers_clean: Any, answers_noisy: Any, *,
                     noise_step: int | None = None,
                     rejected_images: Mapping[str, str] | None = None
                     ) -> tuple[list[dict], dict]:
    """chosen = answer on the original image, rejected = answer on the noised image.

    ``answers_noisy`` records may carry ``image`` (the noised image they were generated from);
    it, or ``rejected_images[id]``, becomes the informative ``rejected_image`` field.
    """
    clean = answer_map(answers_clean, "clean answers")
    noisy = answer_map(answers_noisy, "noisy answers")
    rej_img = rejected_image_map(answers_noisy, rejected_images)
    pairs, identical, missing, empty = [], [], [], []
    for i, rec in enumerate(records):
        check_record(rec, i)
        prompt, _ = first_exchange(rec, i)
        rid = str(rec["id"])
        if rid not in clean or rid not in noisy:
            missing.append(rid)
            continue
        if not clean[rid].strip() or not noisy[rid].strip():
            empty.append(rid)
            continue
        if normalize_response(clean[rid]) == normalize_response(noisy[rid]):
            identical.append(rid)
            continue
        p = make_pair(rec, prompt, clean[rid], noisy[rid],
                      {"method": "seva", **({"noise_step": noise_step} if noise_step is not None
                                            else {})})
        if rid in rej_img and rej_img[rid] != rec["image"]:
            p["rejected_image"] = rej_img[rid]
        pairs.append(p)
    return pairs, {"method": "seva", "n_records": len(records), "n_pairs": len(pairs),
                   "noise_step": noise_step, "skipped_identical": len(identical),
                   "skipped_identical_ids": identical, "skipped_no_answer": len(missing),
                   "skipped_no_answer_ids": missing, "skipped_empty": len(empty),
                   "skipped_empty_ids": empty}
