"""Classifier-free guidance in the reference's two forms (spec §7.6, §11.14)."""

from __future__ import annotations

import jax


def two_way(conditional: jax.Array, unconditional: jax.Array, scale) -> jax.Array:
  """(w + 1) cond - w uncond: the first frame (on epsilon) and interpolation (on v)."""
  return (scale + 1) * conditional - scale * unconditional


def three_way(text_and_image: jax.Array, image_only: jax.Array, unconditional: jax.Array, text_scale,
              image_scale) -> jax.Array:
  """(1 - w_I) eps_uncond + (w_I - w_T) eps_image + w_T eps_full: the base frames, guided by text and by
  the first-frame condition (branches A, B, C of the reference's 3 x 12 batch)."""
  return ((1 - image_scale) * unconditional + (image_scale - text_scale) * image_only
          + text_scale * text_and_image)
