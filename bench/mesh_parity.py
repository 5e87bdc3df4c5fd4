"""Where sharded sampling stops equalling one device (issue 13): the base-frame stage of the tiny-two-level
pipeline on 8 simulated CPU devices (data=2, fsdp=2, tensor=2), one DDIM step, recorded noise, against the
same stage on one device. Prints the largest difference of each variant.

  python bench/mesh_parity.py

Variants: both placements as the pipeline makes them; the mesh's sampler (batch constrained over the data
axes) with the weights left unplaced; the mesh's weights without the batch constraint; one UNet forward on
the same batch with the mesh's weights.
"""

from __future__ import annotations

import dataclasses
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kvjax.pipeline import samplers  # noqa: E402
from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS, GenerationOptions  # noqa: E402
from kvjax.pipeline.text_to_video import TextToVideo  # noqa: E402
from kvjax.pipeline.pipeline_weights import random_weights  # noqa: E402
from kvjax.pipeline.stages import BASE_FRAMES  # noqa: E402
from kvjax.sharding import make_mesh  # noqa: E402
from kvjax.text.hashed_tokenizer import HashedWordTokenizer  # noqa: E402

CONFIG = PIPELINE_PRESETS["tiny-two-level"]
OPTIONS = GenerationOptions(width=32, height=32, base_frame_steps=1, sampler="ddim", seed=5)
PROMPTS = ["a red fox in the snow", "waves", "a boat"]


def main() -> None:
  weights = random_weights(CONFIG, 1)
  tokenizer = HashedWordTokenizer(CONFIG.text_encoder.vocab_size, CONFIG.tokens_length)
  one = TextToVideo(CONFIG, weights, tokenizer)
  sharded = TextToVideo(CONFIG, weights, tokenizer, mesh=make_mesh("data=2,fsdp=2,tensor=2"))
  text, null, _, length = one.encode_text(PROMPTS)
  p, frames = len(PROMPTS), samplers.NUM_BASE_FRAMES
  h = OPTIONS.height // CONFIG.image_movq.downsampling_factor
  key_latents = jax.random.normal(jax.random.key(1), (p, h, h, 4))
  rng = np.random.default_rng(0)
  noise = {"initial_noise": rng.normal(size=(p * frames, h, h, 4)).astype(np.float32),
           "augmentation_noise": rng.uniform(size=(p, h, h, 4)).astype(np.float32)}

  def base_frames(pipeline, params, constrain=True):
    sampler = pipeline.programs.sampler(BASE_FRAMES, 1, OPTIONS)
    if not constrain:
      sampler = dataclasses.replace(sampler, batch_sharding=None)
    run = jax.jit(lambda params, latents, text, null, length: samplers.base_frames(
        pipeline.programs.keyframe_unet, params, latents, text, null, 5.0, 2.0, 10, 20, jax.random.key(3), sampler,
        noise=noise, context_length=length))
    return np.asarray(run(params, key_latents, text, null, length))

  reference = base_frames(one, one._weights(BASE_FRAMES).keyframe)
  placed = sharded._weights(BASE_FRAMES).keyframe
  rows = [("mesh weights and batch constraint (the pipeline)", base_frames(sharded, placed)),
          ("batch constraint, weights unplaced", base_frames(sharded, weights.keyframe)),
          ("mesh weights, no batch constraint", base_frames(sharded, placed, constrain=False))]
  b = 3 * p * frames
  x = rng.normal(size=(b, h, h, 9)).astype(np.float32)
  context = jnp.repeat(jnp.concatenate([text[0], null[0], null[0]]), frames, axis=0)
  mask = jnp.repeat(jnp.concatenate([text[1], null[1], null[1]]), frames, axis=0)
  forward = jax.jit(lambda params: one.programs.keyframe_unet.apply(
      {"params": params}, x, jnp.full((b,), 999.0), context, mask, frame_index=jnp.tile(jnp.arange(frames, dtype=jnp.float32), 3 * p),
      num_frames=frames, noise_aug_time=jnp.full((b,), 20), motion_score=jnp.full((b,), 10), input_layer="video",
      context_length=length))
  unet_reference = np.asarray(forward(weights.keyframe))
  print(f"{'variant':<52} {'max |difference|':>17}")
  for name, value in rows:
    print(f"{name:<52} {np.abs(value - reference).max():>17.3g}")
  print(f"{'one UNet forward, mesh weights':<52} {np.abs(np.asarray(forward(placed)) - unet_reference).max():>17.3g}")
  print(f"(outputs are clipped to [-1, 1]; largest |output| {np.abs(reference).max():.3g})")


if __name__ == "__main__":
  main()
