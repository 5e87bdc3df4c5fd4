"""Training state (a pytree), its shardings, and the jit-compiled, sharded train step."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from kvjax.training.optimizer import OptimizerConfig, ema_decay_at, learning_rate_schedule
from kvjax.sharding import batch_sharding, param_shardings, replicated


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any  # float32 master weights
  opt_state: Any
  ema_params: Any  # exponential moving average of params (None when off)


def _dict_keys(keypath) -> tuple[str, ...]:
  return tuple(k.key for k in keypath if isinstance(k, jax.tree_util.DictKey))


def opt_state_shardings(abstract_opt_state, params_shardings, mesh: Mesh):
  """Optimiser moments shard like the parameters they track (matched by path and shape), the rest replicate."""
  by_path = flax.traverse_util.flatten_dict(params_shardings)

  def one(keypath, leaf):
    keys = _dict_keys(keypath)
    for start in range(len(keys)):
      sharding = by_path.get(keys[start:])
      if sharding is not None and len(sharding.spec) <= leaf.ndim:
        return sharding
    return replicated(mesh)

  return jax.tree_util.tree_map_with_path(one, abstract_opt_state)


def state_shardings(boxed_abstract_params, optimizer, mesh: Mesh, ema: bool) -> TrainState:
  params = param_shardings(boxed_abstract_params, mesh)
  abstract_opt = jax.eval_shape(optimizer.init, nn.unbox(boxed_abstract_params))
  return TrainState(step=replicated(mesh), params=params,
                    opt_state=opt_state_shardings(abstract_opt, params, mesh), ema_params=params if ema else None)


def create_state(params, optimizer, ema: bool) -> TrainState:
  params = jax.tree.map(lambda p: jnp.asarray(p, jnp.float32), params)
  # The EMA gets its own buffers: the step donates the state, and a buffer may be donated only once.
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=optimizer.init(params),
                    ema_params=jax.tree.map(lambda p: jnp.array(p, copy=True), params) if ema else None)


def apply_gradients(state: TrainState, grads, optimizer: optax.GradientTransformation,
                    cfg: OptimizerConfig, finite: jax.Array | None = None) -> TrainState:
  """One optimiser update of `state` (and its EMA) from `grads`. Where the traced bool `finite` is False the
  update is dropped inside the compiled step: parameters, optimiser state and EMA stay exactly as they were
  (the step counter still advances, so the next step draws new randomness)."""
  updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  ema = state.ema_params
  if ema is not None:
    decay = ema_decay_at(cfg, state.step)
    ema = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, ema, params)
  if finite is not None:
    params, opt_state, ema = jax.tree.map(lambda new, old: jnp.where(finite, new, old), (params, opt_state, ema),
                                          (state.params, state.opt_state, state.ema_params))
  return TrainState(state.step + 1, params, opt_state, ema)


def all_finite(*values) -> jax.Array:
  """A traced bool: every one of `values` (scalars, e.g. a loss and a gradient norm) is finite."""
  return jnp.all(jnp.stack([jnp.isfinite(jnp.asarray(v, jnp.float32)) for v in values]))


def nonfinite_paths(tree) -> list[str]:
  """The paths of the floating-point leaves of `tree` (a train state) holding a NaN or an infinity, read in
  one compiled reduction; [] when all are finite. For the checks before a save and after a restore."""
  leaves = [(jax.tree_util.keystr(path), leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
            if hasattr(leaf, "dtype") and jnp.issubdtype(leaf.dtype, jnp.inexact)]
  if not leaves:
    return []
  mesh = next((leaf.sharding.mesh for _, leaf in leaves if isinstance(getattr(leaf, "sharding", None), NamedSharding)),
              None)
  bad = _nonfinite_flags(None if mesh is None else replicated(mesh))([leaf for _, leaf in leaves])
  return [path for (path, _), flag in zip(leaves, np.asarray(jax.device_get(bad))) if flag]


@functools.lru_cache(maxsize=8)
def _nonfinite_flags(out_sharding):
  """One jitted function per output placement (a replicated vector: every host reads it), so that a run
  traces and compiles the check once."""
  return jax.jit(lambda xs: jnp.stack([~jnp.all(jnp.isfinite(x)) for x in xs]), out_shardings=out_sharding)


def trained_grad_norm(grads, trainable) -> jax.Array:
  """Global norm of the gradients of the trainable parameters (frozen ones have gradients too, unused)."""
  return optax.global_norm([g for g, on in zip(jax.tree.leaves(grads), jax.tree.leaves(trainable)) if on])


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, cfg: OptimizerConfig, trainable,
                    seed: int = 0):
  """`step(state, batch) -> (state, metrics)`; the step's randomness is fold_in(seed, step), so a resumed
  run draws exactly what the uninterrupted one would have. A step whose loss or gradient norm is not finite
  leaves the parameters and optimiser state as they were and says so in `metrics["nonfinite"]` (1, else 0):
  a device value like the others, which the train loop reads only when it reads the metrics anyway. Arguments
  after the batch (`frozen`: weights that do not train, such as a LoRA run's base UNet) go to `loss_fn` after
  its rng."""
  schedule = learning_rate_schedule(cfg)

  def step(state: TrainState, batch, *frozen) -> tuple[TrainState, dict[str, jax.Array]]:
    rng = jax.random.fold_in(jax.random.key(seed), state.step)
    loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, rng, *frozen)
    grad_norm = trained_grad_norm(grads, trainable)
    finite = all_finite(loss, grad_norm)
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "learning_rate": schedule(state.step // cfg.accumulation_steps),
               "nonfinite": (~finite).astype(jnp.float32)}
    return apply_gradients(state, grads, optimizer, cfg, finite), metrics

  return step


def jit_train_step(step, shardings, mesh: Mesh, frozen_shardings=None):
  """The step compiled with explicit shardings: state as the rules say, batch split over the data-parallel
  axes; `frozen_shardings`, where given, place a third argument (weights that do not train, such as a
  perceptual network: arguments, not constants baked into the program)."""
  in_shardings = (shardings, batch_sharding(mesh)) + (() if frozen_shardings is None else (frozen_shardings,))
  return jax.jit(step, in_shardings=in_shardings, out_shardings=(shardings, replicated(mesh)), donate_argnums=0)
