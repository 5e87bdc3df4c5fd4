import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from text_testing_utils import PROJECTIONS_CFG as CFG, save_projections, torch_heads
from kvjax.conversion.t5 import convert_text_projections
from kvjax.text import context_length, text_context, unconditional_context


def test_context_length():
  mask = np.zeros((3, 8), np.int32)
  mask[0, :3] = 1
  mask[1, :5] = 1
  assert context_length(mask) == 6  # longest prompt (5 tokens with EOS) plus one padded position
  mask[2] = 1
  assert context_length(mask) == 8  # a full row would ask for 9: clamped to the padded length
  assert context_length(mask[:1]) == 4


def test_text_context_matches_the_reference_recipe(tmp_path):
  """Project all positions, zero the padded ones after the LayerNorm, keep L = max tokens + 1 positions."""
  heads = torch_heads()
  save_projections(tmp_path / "t5_projections.pt", heads)
  params = convert_text_projections(tmp_path / "t5_projections.pt", CFG).params
  rng = np.random.default_rng(0)
  hidden = rng.normal(size=(2, 10, CFG.in_dim)).astype(np.float32)
  mask = np.zeros((2, 10), np.int64)
  mask[0, :4] = 1
  mask[1, :6] = 1
  context, context_mask = text_context(params, hidden, mask, CFG)
  with torch.no_grad():
    projected = heads["projection_base"](torch.from_numpy(hidden))
    projected[torch.from_numpy(mask) == 0] = 0.0
  want = projected[:, :7].numpy()
  assert context.shape == (2, 7, CFG.context_dim) and context_mask.dtype == jnp.bool_
  np.testing.assert_allclose(context, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(context_mask, mask[:, :7].astype(bool))
  assert not np.asarray(context)[0, 4:].any() and np.asarray(context)[1, 5].any()
  other, _ = text_context(params, hidden, mask, CFG, head="projection_interpolation")
  assert np.abs(np.asarray(other) - np.asarray(context)).max() > 1e-3


@pytest.mark.parametrize("shape", [(48,), (1, 48)])
def test_unconditional_context(shape):
  null = np.arange(48, dtype=np.float16).reshape(shape) / 7
  context, mask = unconditional_context(null, batch=3, length=5)
  assert context.shape == (3, 5, 48) and context.dtype == jnp.float32 and mask.shape == (3, 5)
  np.testing.assert_array_equal(context[:, 0], np.broadcast_to(null.reshape(48).astype(np.float32), (3, 48)))
  assert not np.asarray(context)[:, 1:].any()
  np.testing.assert_array_equal(mask, np.arange(5)[None].repeat(3, 0) == 0)
