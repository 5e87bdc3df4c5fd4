import functools
import os

import flax.linen as nn
import flax.traverse_util
import jax
import numpy as np
import pytest

from testing_utils import FIXTURES, write_raw
from kvjax import model_configs
from kvjax.checkpoints import CheckpointError, flatten_state_dict, read_checkpoint
from kvjax.conversion.movq import convert_movq
from kvjax.conversion.state_dict import ConversionError, convert_state_dict
from kvjax.models.movq import MoVQ, reference_chunk_sizes
from kvjax.parity import verify_fixture
from kvjax.params import abstract_params, count_params

IMAGE_CHECKPOINT = os.path.join(FIXTURES, "image_movq", "movq.pt")
VIDEO_CHECKPOINT = os.path.join(FIXTURES, "video_movq", "video_movq.pt")


@pytest.fixture(scope="module")
def video_params():
  return convert_movq(VIDEO_CHECKPOINT, model_configs.VIDEO_MOVQ_TINY).params


@functools.lru_cache(maxsize=None)
def _decoder(config, num_frames, attention_norm_latent):
  model = MoVQ(config)
  return jax.jit(lambda p, z: model.apply({"params": p}, z, num_frames, attention_norm_latent, method="decode"))


def _decode(params, latents, num_frames=None, attention_norm_latent="first_of_clip", config=model_configs.VIDEO_MOVQ_TINY):
  return np.asarray(_decoder(config, num_frames, attention_norm_latent)(params, latents))


def _latents(n, seed=0, size=(4, 4)):
  return (np.random.default_rng(seed).normal(size=(n, *size, 4)) * 0.8).astype(np.float32)


@pytest.mark.parametrize("fixture,cases", [
    ("image_movq", ["encode", "decode_batch", "decode_single"]),
    ("video_movq", ["encode", "decode_clip", "chunked_decode", "decode_single"]),
])
def test_matches_the_reference(fixture, cases):
  results = verify_fixture(os.path.join(FIXTURES, fixture, "manifest.json"))
  assert [r.name for r in results] == [f"{fixture}/{case}" for case in cases]
  for result in results:
    assert result.ok, result.line()


@pytest.mark.parametrize("preset,published", [("image-movq-1.1", 270_603_567), ("video-movq-1.1", 666_131_275)])
def test_production_parameter_counts_are_exact(preset, published):
  tree = abstract_params(model_configs.get_preset(preset))
  assert count_params(tree) == published
  if preset == "video-movq-1.1":  # the README's "556M" is the temporal decoder alone
    assert count_params(tree["decoder"]) == 556_645_919


def test_tiny_parameter_counts_match_the_reference_manifests():
  for fixture, config in (("image_movq", model_configs.IMAGE_MOVQ_TINY), ("video_movq", model_configs.VIDEO_MOVQ_TINY)):
    manifest = read_checkpoint(os.path.join(FIXTURES, fixture, f"{fixture.replace('image_', '')}.pt"))
    assert count_params(abstract_params(config)) == sum(t.size for t in flatten_state_dict(manifest).values())


def test_every_parameter_has_logical_axes():
  for path, leaf in flax.traverse_util.flatten_dict(abstract_params(model_configs.VIDEO_MOVQ_TINY)).items():
    assert isinstance(leaf, nn.Partitioned), path
    assert len(leaf.names) == len(leaf.value.shape), path


def test_attention_norm_quirk_and_its_correction():
  # The image decoder has no temporal layers, so frames interact only through the quirk.
  params = convert_movq(IMAGE_CHECKPOINT, model_configs.IMAGE_MOVQ_TINY).params
  latents = _latents(3)
  decode = functools.partial(_decode, params, latents, config=model_configs.IMAGE_MOVQ_TINY)
  reference, corrected = decode(), decode(attention_norm_latent="own")
  # Frame 0 is normalised with its own latent either way; the others only with the correction, which
  # equals decoding each latent alone.
  np.testing.assert_allclose(reference[0], corrected[0], rtol=1e-5, atol=1e-5)
  assert np.abs(reference[1:] - corrected[1:]).max() > 1e-2
  alone = np.concatenate([_decode(params, latents[i:i + 1], config=model_configs.IMAGE_MOVQ_TINY) for i in range(3)])
  np.testing.assert_allclose(corrected, alone, rtol=1e-5, atol=1e-5)


def test_clips_are_decoded_independently(video_params):
  latents = _latents(4, seed=1)
  together = _decode(video_params, latents, num_frames=2)
  apart = np.concatenate([_decode(video_params, latents[:2]), _decode(video_params, latents[2:])])
  np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-5)
  # ... while frames of one clip interact (temporal convolutions and attention).
  one_clip = _decode(video_params, latents)
  assert np.abs(one_clip[:2] - together[:2]).max() > 1e-2


def test_reference_chunk_sizes():
  assert reference_chunk_sizes(12) == [4, 4, 4]
  assert reference_chunk_sizes(45) == [5] * 9
  assert reference_chunk_sizes(177) == [5] * 35 + [2]
  assert reference_chunk_sizes(9) == [5, 4]
  with pytest.raises(ValueError, match="at least 4 frames"):
    reference_chunk_sizes(3)


def test_bad_inputs_are_named(video_params):
  model = MoVQ(model_configs.VIDEO_MOVQ_TINY)
  with pytest.raises(ValueError, match="not a multiple of 4"):
    model.apply({"params": video_params}, np.zeros((1, 18, 16, 3), np.float32), method="encode")
  with pytest.raises(ValueError, match=r"images must be \(N, H, W, 3\)"):
    model.apply({"params": video_params}, np.zeros((1, 16, 16, 4), np.float32), method="encode")
  with pytest.raises(ValueError, match="do not split into clips of 2"):
    model.apply({"params": video_params}, _latents(3), 2, method="decode")
  with pytest.raises(ValueError, match="attention_norm_latent"):
    model.apply({"params": video_params}, _latents(1), None, "mean", method="decode")


def test_image_checkpoint_does_not_convert_as_video_and_back():
  with pytest.raises(ConversionError, match="missing keys") as info:
    convert_movq(IMAGE_CHECKPOINT, model_configs.VIDEO_MOVQ_TINY)
  assert "decoder.mid.temporal_attn_1.q.weight" in str(info.value)
  with pytest.raises(ConversionError, match="unexpected keys") as info:
    convert_movq(VIDEO_CHECKPOINT, model_configs.IMAGE_MOVQ_TINY)
  assert "decoder.up.0.block.0.temporal_merge1 (1,)" in str(info.value)


def test_a_unet_checkpoint_is_not_a_movq():
  with pytest.raises(CheckpointError, match="expected a MoVQ state dict"):
    convert_movq(os.path.join(FIXTURES, "keyframe_unet", "t2v.pt"), model_configs.IMAGE_MOVQ_TINY)


def test_misshaped_weight_is_named(tmp_path):
  state = flatten_state_dict(read_checkpoint(IMAGE_CHECKPOINT))
  state["decoder.norm_out.conv_y.weight"] = write_raw(tmp_path, "y", np.zeros((32, 3, 1, 1), np.float32))
  with pytest.raises(ConversionError, match=r"decoder.norm_out.conv_y.weight: checkpoint \(32, 3, 1, 1\), "
                     r"model expects \(32, 4, 1, 1\)"):
    convert_state_dict(state, model_configs.IMAGE_MOVQ_TINY, np.float32)


def test_every_key_name_round_trips():
  from kvjax.conversion.naming import torch_key, torch_module_path
  state = flatten_state_dict(read_checkpoint(VIDEO_CHECKPOINT))
  flat = flax.traverse_util.flatten_dict(nn.unbox(abstract_params(model_configs.VIDEO_MOVQ_TINY)))
  for key in state:
    modules, leaf = torch_module_path(key)
    names = ("kernel", "scale") if leaf == "weight" else (leaf,)
    path = next(modules + (n,) for n in names if modules + (n,) in flat)
    assert torch_key(path) == key
