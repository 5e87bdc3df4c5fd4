"""Does a shapes-world weights folder's interpolation UNet use its key frames? Its x0 prediction per timestep
on rendered clips whose middle frames are known, against a linear blend of the two key frames.

  python bench/demo_interpolation.py [--weights kvjax/demo/weights ...] [--speed fast]

Clips of 9 consecutive frames (keys 0, 4, 8: the spacing of the demo's medium pass), one per colour x
direction, encoded by the folder's image MoVQ. Per weights folder and timestep: the RMS error of the x0 that
the predicted v implies (kvjax.diffusion.ddpm.predict_original), and how far that x0 moves between two noise
draws (its spread: x_t's noise leaking into the answer). A model that learned the keys is at most as far off as the
blend at every timestep, and its spread is small where the noise hides the frames.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kvjax import demo  # noqa: E402
from kvjax.data import shapes  # noqa: E402
from kvjax.demo import judge  # noqa: E402

TIMESTEPS = (999, 600, 300, 100)
GROUPS = 2  # keys 0-4 and 4-8


def _clips(speed: str) -> tuple[list[tuple[str, str, str]], np.ndarray]:
  cases = judge.prompt_grid()
  rng = np.random.default_rng(7)
  clips = [shapes.render_clip(shapes.sample_spec(rng, 48, colour=c, shape=s, direction=d, speed_class=speed),
                              48, 64, 64)[:4 * GROUPS + 1] for c, s, d in cases]
  return cases, np.stack(clips)


def measure(weights: str, speed: str) -> tuple[float, dict[int, tuple[float, float]]]:
  """(the blend's RMS error, {t: (x0 RMS error, x0 spread between two noise draws)})."""
  import jax
  import jax.numpy as jnp
  from PIL import Image
  from kvjax.diffusion.ddpm import add_noise, predict_original
  from kvjax.diffusion.schedule import INTERPOLATION_SCHEDULER, make_schedule
  from kvjax.pipeline.pipeline_config import GenerationOptions
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.text.tokenizer import T5Tokenizer
  from kvjax.training.interpolation_loss import keys_and_targets

  config, w = load_pipeline_weights(weights, tokens_length=16)
  pipe = TextToVideo(config, w, T5Tokenizer(os.path.join(weights, "spiece.model"), 16))
  cases, clips = _clips(speed)
  (context, mask), _, _, length = pipe.encode_text([judge.prompt(*c) for c in cases])
  options = GenerationOptions(**{**demo.DEMO_OPTIONS, "fps": "medium"})
  latents = jnp.stack([pipe.encode_images([Image.fromarray(f) for f in clip], options) for clip in clips])
  keys, targets = keys_and_targets(latents)  # as training reads a clip
  p, _, h, wd, c = keys.shape
  n = p * GROUPS
  left, right = keys[:, :-1].reshape(n, h, wd, c), keys[:, 1:].reshape(n, h, wd, c)
  targets = targets.reshape(n, h, wd, 3 * c)
  blend = jnp.concatenate([(1 - k / 4) * left + k / 4 * right for k in (1, 2, 3)], axis=-1)
  rms = lambda a: float(jnp.sqrt(jnp.mean(jnp.square(a))))

  schedule = make_schedule(INTERPOLATION_SCHEDULER)
  unet = pipe.programs.interpolation_unet
  per_group = lambda a: jnp.repeat(a, GROUPS, axis=0)

  @jax.jit
  def x0(t, noise):
    time = jnp.full((n,), t, jnp.int32)
    noisy = add_noise(schedule, targets, noise, time)
    v = unet.apply({"params": w.interpolation}, jnp.concatenate([left, noisy, right], -1), time,
                   per_group(context), per_group(mask), num_groups=GROUPS,
                   perturbation_time=jnp.zeros((n,), jnp.int32), skip_frames=jnp.full((n,), 3, jnp.int32),
                   temporal_mask=jnp.ones((n,)), context_length=length)
    return predict_original(INTERPOLATION_SCHEDULER, schedule.alpha_bar(t), noisy, v)

  rows = {}
  for t in TIMESTEPS:
    a, b = (x0(t, jax.random.normal(jax.random.key(seed), targets.shape)) for seed in (1, 2))
    rows[t] = (rms(a - targets), rms(a - b) / np.sqrt(2))
  return rms(blend - targets), rows


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--weights", nargs="+", default=[demo.DEMO_WEIGHTS])
  p.add_argument("--speed", default="fast", choices=shapes.SPEED_CLASSES)
  args = p.parse_args(argv)
  print(f"interpolation UNet x0 on rendered clips ({args.speed} shapes, keys 4 frames apart), RMS in latent units")
  print("| weights | blend of the keys | " + " | ".join(f"t={t} error / spread" for t in TIMESTEPS) + " |")
  print("|---|---|" + "---|" * len(TIMESTEPS))
  for weights in args.weights:
    blend, rows = measure(weights, args.speed)
    cells = " | ".join(f"{error:.3f} / {spread:.3f}" for error, spread in rows.values())
    print(f"| {weights} | {blend:.3f} | {cells} |", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
