"""Dense and convolution layers with logical axis names, in the PyTorch-equivalent parameterisation; each reads
int8 kernels too (kvjax.quantization)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from kvjax.quantization import Int8Aware
from kvjax.sharding import logical_init

Dtype = Any

# PyTorch's default initialisation family (uniform with bound 1/sqrt(fan_in)) is variance_scaling(1/3).
torch_default_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


class Dense(Int8Aware, nn.Dense):
  """nn.Dense whose kernel may be an Int8Weight."""


class Conv(Int8Aware, nn.Conv):
  """nn.Conv whose kernel may be an Int8Weight."""


def dense(features: int, axes: tuple[str | None, str | None], *, use_bias: bool, name: str,
          dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, zero_init: bool = False) -> Dense:
  kernel_init = nn.initializers.zeros if zero_init else torch_default_init
  return Dense(
      features, use_bias=use_bias, name=name, dtype=dtype, param_dtype=param_dtype,
      kernel_init=logical_init(kernel_init, axes),
      bias_init=logical_init(nn.initializers.zeros, (axes[1],)))


def conv(features: int, kernel_size: tuple[int, ...], *, name: str, strides: int | tuple[int, ...] = 1,
         padding: Any = "SAME", use_bias: bool = True, in_axis: str = "conv_in", out_axis: str = "conv_out",
         dtype: Dtype = jnp.float32, param_dtype: Dtype = jnp.float32, zero_init: bool = False) -> Conv:
  """A convolution whose kernel is laid out (*kernel_size, in, out), the transpose of PyTorch's."""
  kernel_init = nn.initializers.zeros if zero_init else torch_default_init
  taps = (None,) * len(kernel_size)
  return Conv(
      features, kernel_size, strides=strides, padding=padding, use_bias=use_bias, name=name,
      dtype=dtype, param_dtype=param_dtype,
      kernel_init=logical_init(kernel_init, (*taps, in_axis, out_axis)),
      bias_init=logical_init(nn.initializers.zeros, (out_axis,)))


class ConvTranspose2x2(Int8Aware, nn.Module):
  """Transposed convolution with kernel 2 and stride 2: every input pixel becomes a 2x2 output patch.

  out[n, 2a+p, 2b+q, o] = bias[o] + sum_c x[n, a, b, c] * kernel[p, q, c, o]. Written as one matmul (no
  dilated convolution) and with the kernel in the direct orientation, so the converter only permutes
  PyTorch's (in, out, p, q) weight and never flips it.
  """

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    kernel = self.param("kernel", logical_init(torch_default_init, (None, None, "conv_in", "conv_out")),
                        (2, 2, x.shape[-1], self.features), self.param_dtype)
    bias = self.param("bias", logical_init(nn.initializers.zeros, ("conv_out",)), (self.features,),
                      self.param_dtype)
    x, kernel, bias = (t.astype(self.dtype) for t in (x, kernel, bias))
    n, h, w, _ = x.shape
    y = jnp.einsum("nhwc,pqco->nhpwqo", x, kernel)
    return y.reshape(n, 2 * h, 2 * w, self.features) + bias
