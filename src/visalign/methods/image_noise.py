"""Diffusion-noise image corruption, as SeVa (and POVID's second stage) use it.

SeVa ("Self-supervised Visual Preference Alignment") builds the *rejected* response by asking
the model about an augmented image; its strongest augmentation is the forward diffusion process

    x_t = sqrt(ᾱ_t) · x_0 + sqrt(1 − ᾱ_t) · ε,   ε ~ N(0, I),   ᾱ_t = ∏_{s=1..t} (1 − β_s)

with a linear β schedule from 1e-4 to 0.02 over T = 1000 steps (the DDPM schedule), applied to
the image scaled to [-1, 1]; SeVa's default is t = 500. POVID's second stage corrupts images the
same way to provoke hallucinated responses.

Departures (documented): the result must be a viewable image, so x_t is clipped back to
[-1, 1] and quantised to 8-bit RGB (SeVa feeds the un-clipped tensor to the vision tower); the
step is 1-based as in the DDPM paper (t = 0 returns the image unchanged), where the VCD-derived
SeVa code indexes the cumulative product from 0 (its step t is our t + 1).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

__all__ = ["linear_betas", "alpha_bar", "diffusion_noise"]

SEVA_NOISE_STEP = 500


def linear_betas(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
                 ) -> np.ndarray:
    """β_1..β_T, linearly spaced (float64, shape ``(num_steps,)``)."""
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def alpha_bar(step: int, num_steps: int = 1000, beta_start: float = 1e-4,
              beta_end: float = 0.02) -> float:
    """ᾱ_t = ∏_{s=1..t} (1 − β_s); 1.0 at t = 0, decreasing in t."""
    if not isinstance(step, (int, np.integer)) or isinstance(step, bool):
        raise TypeError(f"noise step must be an integer, got {step!r}")
    if not 0 <= step <= num_steps:
        raise ValueError(f"noise step must be in [0, {num_steps}], got {step}")
    betas = linear_betas(num_steps, beta_start, beta_end)
    return float(np.prod(1.0 - betas[:step]))


def diffusion_noise(image: Image.Image, step: int = SEVA_NOISE_STEP, seed: int = 0, *,
                    num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
                    ) -> Image.Image:
    """Forward-diffuse ``image`` to step ``step`` with Gaussian noise from ``seed``.

    Pure: the same (image, step, seed) gives the same pixels; a larger step gives a noisier
    image (ᾱ_t decreases). Returns a new RGB image of the same size.
    """
    ab = alpha_bar(step, num_steps, beta_start, beta_end)
    x = np.asarray(image.convert("RGB"), dtype=np.float64) / 127.5 - 1.0   # [0,255] -> [-1,1]
    if step == 0:
        return image.convert("RGB").copy()
    eps = np.random.default_rng(seed).standard_normal(x.shape)
    xt = np.sqrt(ab) * x + np.sqrt(1.0 - ab) * eps
    out = np.clip((np.clip(xt, -1.0, 1.0) + 1.0) * 127.5, 0, 255).round().astype(np.uint8)
    return Image.fromarray(out)  # (H, W, 3) uint8 -> RGB
