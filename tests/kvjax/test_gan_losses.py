import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax.training.gan_losses import (adaptive_weight, discriminator_factor, hinge_discriminator_loss,
                                       hinge_generator_loss, lecam_ema_update, lecam_regularizer, r1_penalty)


def test_hinge_discriminator_loss():
  real = jnp.array([2.0, 0.5, -1.0, 1.0])   # relu(1 - real): 0, 0.5, 2, 0 -> mean 0.625
  fake = jnp.array([-3.0, 0.0, 0.5])        # relu(1 + fake): 0, 1, 1.5 -> mean 5/6
  loss = hinge_discriminator_loss(real, fake)
  assert loss.dtype == jnp.float32 and loss.shape == ()
  np.testing.assert_allclose(loss, 0.625 + 2.5 / 3, rtol=1e-6)
  assert float(hinge_discriminator_loss(jnp.ones((2, 3, 1)) * 1.5, -jnp.ones((2, 3, 1)) * 2)) == 0.0


def test_hinge_generator_loss():
  fake = jnp.array([[1.0, -2.0], [3.0, 0.0]], jnp.bfloat16)
  loss = hinge_generator_loss(fake)
  assert loss.dtype == jnp.float32
  np.testing.assert_allclose(loss, -0.5)


def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm():
  w = jnp.asarray(np.random.default_rng(0).normal(size=(4, 5, 3)), jnp.float32)
  real = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4, 5, 3)), jnp.float32)
  d = lambda x: jnp.sum(w * x, axis=(1, 2, 3))
  np.testing.assert_allclose(r1_penalty(d, real), jnp.sum(w * w), rtol=1e-5)
  # Patch logits: D(x)[n, i] = sum(w_i * x[n]) -> the gradient of the sample's summed logits is sum_i w_i.
  ws = jnp.stack([w, 2 * w])
  patches = lambda x: jnp.einsum("nabc,kabc->nk", x, ws)
  np.testing.assert_allclose(r1_penalty(patches, real), 9 * jnp.sum(w * w), rtol=1e-5)


def test_r1_is_mean_over_samples_and_differentiable_in_the_weights():
  real = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)), jnp.float32)
  d = lambda w, x: jnp.sum(jnp.tanh(x * w), axis=1)
  w = jnp.array([0.5, -1.0, 2.0, 0.1])
  per_sample = [float(r1_penalty(lambda x: d(w, x), real[i:i + 1])) for i in range(3)]
  np.testing.assert_allclose(r1_penalty(lambda x: d(w, x), real), np.mean(per_sample), rtol=1e-5)
  grad = jax.grad(lambda w: r1_penalty(lambda x: d(w, x), real))(w)
  assert grad.shape == w.shape and np.isfinite(grad).all() and np.abs(grad).max() > 0


def test_lecam_regularizer():
  real = jnp.array([1.0, 3.0, -1.0])   # ema_fake 0.5: relu(0.5, 2.5, -1.5)^2 -> (0.25 + 6.25) / 3
  fake = jnp.array([0.0, 2.0])         # ema_real 1.0: relu(1, -1)^2 -> 0.5
  value = lecam_regularizer(real, fake, ema_real=jnp.float32(1.0), ema_fake=jnp.float32(0.5))
  assert value.dtype == jnp.float32
  np.testing.assert_allclose(value, 6.5 / 3 + 0.5, rtol=1e-6)
  grads = jax.grad(lambda e: lecam_regularizer(real, fake, e, e))(jnp.float32(0.7))
  assert float(grads) == 0.0  # the averages are constants


def test_lecam_ema_update():
  np.testing.assert_allclose(lecam_ema_update(jnp.float32(1.0), jnp.array([2.0, 4.0]), 0.9), 0.9 + 0.3)
  ema_real, ema_fake = lecam_ema_update((0.0, 1.0), (jnp.array([1.0, 3.0]), jnp.array([-2.0])), decay=0.5)
  np.testing.assert_allclose([ema_real, ema_fake], [1.0, -0.5])
  assert ema_real.dtype == jnp.float32


def test_adaptive_weight():
  rec = jnp.array([3.0, 4.0])         # norm 5
  gen = {"a": jnp.array([[1.0]]), "b": jnp.array([0.0, 0.0])}  # norm 1
  np.testing.assert_allclose(adaptive_weight(rec, gen["a"]), 5.0 / (1.0 + 1e-4), rtol=1e-6)
  np.testing.assert_allclose(adaptive_weight({"x": rec, "y": jnp.zeros(3)}, gen), 5.0 / (1.0 + 1e-4),
                             rtol=1e-6)
  np.testing.assert_allclose(adaptive_weight(rec, 2 * rec, eps=0.0), 0.5, rtol=1e-6)
  # Clipping: a vanishing generator gradient gives max_weight.
  assert float(adaptive_weight(rec, jnp.zeros(2))) == 1e4
  assert float(adaptive_weight(rec, jnp.zeros(2), max_weight=10.0)) == 10.0
  assert float(adaptive_weight(jnp.zeros(2), gen["a"])) == 0.0
  # Gradients stopped.
  assert float(jax.grad(lambda s: adaptive_weight(s * rec, gen["a"]))(1.0)) == 0.0
  with pytest.raises(ValueError):
    adaptive_weight({}, gen)


def test_discriminator_factor():
  assert float(discriminator_factor(9, 10)) == 0.0
  assert float(discriminator_factor(10, 10)) == 1.0
  assert float(discriminator_factor(jnp.int32(11), 10)) == 1.0
  steps = jnp.arange(8)
  np.testing.assert_array_equal(jax.jit(discriminator_factor)(steps, 5), [0, 0, 0, 0, 0, 1, 1, 1])
  assert discriminator_factor(0, 0).dtype == jnp.float32


def test_everything_jits():
  real, fake = jnp.linspace(-2, 2, 6), jnp.linspace(2, -2, 6)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6)
  close(jax.jit(hinge_discriminator_loss)(real, fake), hinge_discriminator_loss(real, fake))
  close(jax.jit(hinge_generator_loss)(fake), hinge_generator_loss(fake))
  close(jax.jit(lecam_regularizer)(real, fake, 0.1, -0.1),
                             lecam_regularizer(real, fake, 0.1, -0.1))
  close(jax.jit(lecam_ema_update)(0.5, real, 0.99), lecam_ema_update(0.5, real, 0.99))
  close(jax.jit(adaptive_weight)(real, fake), adaptive_weight(real, fake))
  w = jnp.arange(4.0)
  r1 = jax.jit(lambda w, x: r1_penalty(lambda x: x @ w, x))
  np.testing.assert_allclose(r1(w, jnp.ones((2, 4))), 14.0, rtol=1e-6)
  step = jax.jit(lambda s: discriminator_factor(s, 100) * hinge_generator_loss(fake + 1.0))
  assert float(step(99)) == 0.0
  close(step(100), -1.0)
