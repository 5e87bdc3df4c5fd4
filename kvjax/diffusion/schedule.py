"""The reference noise schedule (spec §7.1-§7.3): cosine betas rescaled to zero terminal SNR, and the
inference timesteps of each spacing.

`SchedulerConfig` is static (hashable, passed to jit as a static argument); `Schedule` holds the arrays a
compiled sampling loop indexes with a traced step number.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

PREDICTION_TYPES = ("epsilon", "v_prediction")
SPACINGS = ("leading", "trailing", "linspace")


@dataclasses.dataclass(frozen=True)
class SchedulerConfig:
  """The settings the reference passes to its DDPM scheduler; the rest are the library defaults it uses."""

  prediction_type: str = "epsilon"
  timestep_spacing: str = "leading"
  num_inference_steps: int = 50
  num_train_timesteps: int = 1000
  rescale_betas_zero_snr: bool = True
  thresholding: bool = True
  dynamic_thresholding_ratio: float = 0.995
  sample_max_value: float = 1.0  # with 1.0 the dynamic thresholding is a plain clamp to [-1, 1]
  clip_sample: bool = True  # used only without thresholding
  clip_sample_range: float = 1.0
  steps_offset: int = 0

  def __post_init__(self):
    if self.prediction_type not in PREDICTION_TYPES:
      raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
    if self.timestep_spacing not in SPACINGS:
      raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {self.timestep_spacing!r}")
    if not 1 <= self.num_inference_steps <= self.num_train_timesteps:
      raise ValueError(f"num_inference_steps must be in [1, {self.num_train_timesteps}], "
                       f"got {self.num_inference_steps}")


# The two reference samplers (spec §7.1): frames with epsilon prediction, interpolation with v prediction.
KEYFRAME_SCHEDULER = SchedulerConfig("epsilon", "leading", 50)
INTERPOLATION_SCHEDULER = SchedulerConfig("v_prediction", "trailing", 10)


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
  """"squaredcos_cap_v2": beta_i = 1 - abar(i+1)/abar(i) for abar(s) = cos^2((s + 0.008)/1.008 * pi/2),
  in Python float64 arithmetic, stored as float32 (as the reference)."""
  abar = lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
  n = num_train_timesteps
  return np.array([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)], np.float32)


def _cumprod(values: np.ndarray) -> np.ndarray:
  """A float32 cumulative product accumulated in float64, as PyTorch's CPU kernel (the reference's table)."""
  return np.cumprod(values.astype(np.float64)).astype(np.float32)


def rescale_to_zero_terminal_snr(betas: np.ndarray) -> np.ndarray:
  """Shifts and scales sqrt(alpha_bar) so that it ends at exactly 0 and keeps its first value (float32)."""
  root = np.sqrt(_cumprod(np.float32(1) - betas))
  first, last = root[0], root[-1]
  root = (root - last) * (first / (first - last))
  alpha_bar = root * root
  alphas = np.concatenate([alpha_bar[:1], alpha_bar[1:] / alpha_bar[:-1]])
  return (np.float32(1) - alphas).astype(np.float32)


def alphas_cumprod(config: SchedulerConfig) -> np.ndarray:
  betas = cosine_betas(config.num_train_timesteps)
  if config.rescale_betas_zero_snr:
    betas = rescale_to_zero_terminal_snr(betas)
  return _cumprod(np.float32(1) - betas)


def inference_timesteps(config: SchedulerConfig) -> np.ndarray:
  """Descending int timesteps of the sampling loop (spec §7.3)."""
  n, steps = config.num_train_timesteps, config.num_inference_steps
  if config.timestep_spacing == "leading":
    ratio = n // steps
    t = (np.arange(steps) * ratio).round()[::-1] + config.steps_offset
  elif config.timestep_spacing == "trailing":
    t = np.round(np.arange(n, 0, -n / steps)) - 1
  else:
    t = np.linspace(0, n - 1, steps).round()[::-1]
  return t.astype(np.int32)


@flax.struct.dataclass
class Schedule:
  """`alphas_cumprod` (T,), and per loop step its timestep and the previous one (-1 after the last)."""

  alphas_cumprod: jax.Array
  timesteps: jax.Array
  prev_timesteps: jax.Array

  @property
  def num_steps(self) -> int:
    return self.timesteps.shape[0]

  def alpha_bar(self, t: jax.Array) -> jax.Array:
    """alpha_bar at timestep t, and 1 for t < 0 (the step after the last)."""
    return jnp.where(t >= 0, self.alphas_cumprod[jnp.maximum(t, 0)], 1.0)


def make_schedule(config: SchedulerConfig) -> Schedule:
  timesteps = inference_timesteps(config)
  return Schedule(alphas_cumprod=jnp.asarray(alphas_cumprod(config)), timesteps=jnp.asarray(timesteps),
                  prev_timesteps=jnp.asarray(np.append(timesteps[1:], -1).astype(np.int32)))
