"""Feature caching between denoising steps (the DeepCache idea, adapted to the kvjax UNets): which steps of a
sampling loop run the UNet whole and which reuse its deep features.

On a full step the UNet runs whole and keeps the features entering its shallowest up level; on a cached
step only its shallowest down and up levels (and the input and output layers) run, on the features kept at
the last full step (kvjax.models.unet_layers.down_up_and_out). The schedule is static: a tuple of booleans,
one per loop step, True where the step is full, part of the compiled loop's identity (kvjax.diffusion.loop).

Schedules (`SCHEDULES`), for an interval N:
- "uniform": every N-th step is full (0, N, 2N, ...), DeepCache's uniform schedule;
- "ends": as many full steps as "uniform", spaced half as far apart at both ends of the loop as in its middle
  (gaps grow as 1 - cos from the ends to the centre), and the last step full: the first steps lay out the
  picture and the last ones its detail, where reused features cost the most.
The first step is always full (it fills the cache); `full_ends` K makes the first and last K steps full too.
"""

from __future__ import annotations

import math

import numpy as np

SCHEDULES = ("uniform", "ends")


def full_steps(num_steps: int, interval: int, schedule: str = "uniform", full_ends: int = 0) -> tuple[bool, ...] | None:
  """Per loop step, True where the UNet runs whole; None when every step is (interval 1: no caching)."""
  if schedule not in SCHEDULES:
    raise ValueError(f"cache schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
  if not 1 <= interval <= num_steps:
    raise ValueError(f"cache interval must be in [1, {num_steps}] (the step count), got {interval}")
  if full_ends < 0:
    raise ValueError(f"full_ends must be at least 0, got {full_ends}")
  if interval == 1:
    return None
  if schedule == "uniform":
    full = np.arange(num_steps) % interval == 0
  else:
    count = math.ceil(num_steps / interval)  # the full steps of "uniform"
    full = np.zeros(num_steps, bool)
    if count < 2:
      full[0] = True
    else:
      # u -> u - a sin(2 pi u) / (2 pi): slope 1 - a at both ends, 1 + a in the middle; a = 1/2.
      u = np.linspace(0.0, 1.0, count)
      full[np.round((num_steps - 1) * (u - 0.5 * np.sin(2 * np.pi * u) / (2 * np.pi))).astype(int)] = True
  full[0] = True
  full[:full_ends] = True
  full[max(num_steps - full_ends, 0):] = True
  return None if full.all() else tuple(bool(f) for f in full)
