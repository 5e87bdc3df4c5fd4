"""The optimiser: AdamW on the trainable parameters only, warmup then cosine decay, global-norm clipping,
optional gradient accumulation. Frozen parameters get no update and no optimiser state.

A step whose loss or gradient norm is not finite never updates: the compiled step keeps the parameters,
optimiser state and EMA as they were (`train_state.apply_gradients`). `nonfinite` says what the train loop
does then: "stop" (exit naming the step; the checkpoints hold finite weights) or "skip" (train on, counting
the skipped steps in the metrics)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

NONFINITE_POLICIES = ("stop", "skip")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  learning_rate: float = 1e-4
  warmup_steps: int = 1000
  decay_steps: int = 100_000  # cosine decay after the warmup, to end_learning_rate_ratio x the peak
  end_learning_rate_ratio: float = 0.1
  weight_decay: float = 0.0
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  clip_norm: float = 1.0
  accumulation_steps: int = 1  # micro-batches whose gradients are averaged before one update
  ema_decay: float = 0.9999  # the EMA's decay once warmed up (`ema_decay_at`); 0 turns the EMA off
  nonfinite: str = "stop"  # a non-finite loss or gradient norm: "stop" the run, or "skip" the step's update

  def __post_init__(self):
    if self.nonfinite not in NONFINITE_POLICIES:
      raise ValueError(f"OptimizerConfig.nonfinite must be one of {', '.join(NONFINITE_POLICIES)}, "
                       f"got {self.nonfinite!r}")


def ema_decay_at(cfg: OptimizerConfig, step: jax.Array) -> jax.Array:
  """The EMA's decay at update `step` (0-based), warmed up as diffusers' EMAModel does by default:
  min(ema_decay, (1 + step) / (10 + step)). A constant decay d keeps d^T of the initial weights after T
  updates (0.999 over 600 steps: 55% of a random init); warmed up, the average forgets them within tens of
  steps and then averages over the last ~min(t / 9, 1 / (1 - d)) updates."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(cfg.ema_decay, (1 + step) / (10 + step))


def learning_rate_schedule(cfg: OptimizerConfig) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      0.0, cfg.learning_rate, max(cfg.warmup_steps, 1), max(cfg.warmup_steps, 1) + cfg.decay_steps,
      cfg.learning_rate * cfg.end_learning_rate_ratio)


def make_optimizer(cfg: OptimizerConfig, trainable) -> optax.GradientTransformation:
  """`trainable`: a bool tree like the parameters (`kvjax.training.trainable.trainable_mask`)."""
  adamw = optax.chain(
      optax.clip_by_global_norm(cfg.clip_norm),
      optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay))
  labels = _labels(trainable)
  optimizer = optax.multi_transform({"train": adamw, "freeze": optax.set_to_zero()}, labels)
  if cfg.accumulation_steps > 1:
    optimizer = optax.MultiSteps(optimizer, every_k_schedule=cfg.accumulation_steps)
  return optimizer


def _labels(trainable):
  return jax.tree.map(lambda on: "train" if on else "freeze", trainable)
