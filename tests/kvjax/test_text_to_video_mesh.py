"""The pipeline sharded over 8 simulated CPU devices, and with offloading: what one device computes.

The "tiny-two-level" pipeline keeps the SPMD compiles short; its UNets have every kind of layer the pipeline shards.
"""

import dataclasses

import jax
import numpy as np
import pytest
from PIL import Image

from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS, GenerationOptions
from kvjax.pipeline.text_to_video import TextToVideo
from kvjax.pipeline.pipeline_weights import random_weights
from kvjax.sharding import make_mesh
from kvjax.text.hashed_tokenizer import HashedWordTokenizer

CONFIG = PIPELINE_PRESETS["tiny-two-level"]
# DDIM (no step noise): random weights amplify rounding through DDPM's noise and the MoVQ's codebook, which
# would turn float32 summation-order differences into other videos.
OPTIONS = GenerationOptions(width=32, height=32, fps="medium", key_frame_steps=2, base_frame_steps=2,
                            interpolation_steps=1, sampler="ddim", seed=5)
PROMPTS = ["a red fox in the snow", "waves", "a boat"]  # 3 prompts: batches that do not divide the mesh axes
MESH = "data=2,fsdp=2,tensor=2"


def _pipeline(**kwargs):
  return TextToVideo(CONFIG, random_weights(CONFIG, 1), HashedWordTokenizer(CONFIG.text_encoder.vocab_size,
                                                                            CONFIG.tokens_length), **kwargs)


def _stages(pipeline, given=None, options=OPTIONS, last="frames"):
  """The pipeline's stages one by one, as `TextToVideo.__call__` runs them (the offloading test checks that
  the last one equals a whole call). With `given` (another run's outputs), each stage takes its inputs from
  `given` instead of from this run, so each stage is compared alone: otherwise one rounding difference in the
  key frames' uint8 pixels, which the base frames re-encode, turns into larger ones downstream. `last`: the
  stage to stop after."""
  key_rng, base_rng, pass_rng = jax.random.split(jax.random.key(options.seed), 3)
  inputs = lambda name, mine: mine if given is None else given[name]
  out = {}
  text, null, interpolation_null, length = pipeline.encode_text(PROMPTS)
  out["text"] = np.asarray(text[0])
  text = (inputs("text", text[0]), text[1])
  out["key frames"] = pipeline.key_frames(text, null, length, options, key_rng)
  images = [Image.fromarray(image) for image in inputs("key frames", out["key frames"])]
  key_latents = pipeline.encode_images(images, options)
  out["base frames"] = np.asarray(pipeline.base_frames(key_latents, text, null, length, options, base_rng))
  if last == "base frames":
    return out
  out["interpolation"] = np.asarray(pipeline.interpolate(inputs("base frames", out["base frames"]), text,
                                                         interpolation_null, length, options, 3, pass_rng))
  out["frames"] = pipeline.decode_video(inputs("interpolation", out["interpolation"]))
  return out


@pytest.fixture(scope="module")
def single_device():
  pipeline = _pipeline()
  return pipeline, _stages(pipeline)


def _levels_apart(a, b):
  return np.abs(a.astype(np.int32) - b.astype(np.int32))


def test_a_sharded_pipeline_places_weights_once_and_makes_the_frames_of_one_device(single_device):
  reference, expected = single_device
  pipeline = _pipeline(mesh=make_mesh(MESH))
  # The weights were placed once, split as the rule table says: the keyframe UNet's largest kernel over
  # fsdp and tensor, each device holding a quarter of it.
  largest = max(jax.tree.leaves(pipeline._placed.keyframe), key=lambda a: a.size)
  spec = tuple(largest.sharding.spec) + (None,) * (largest.ndim - len(largest.sharding.spec))
  assert {"fsdp", "tensor"} <= set(spec)
  quarter = tuple(n // 2 if axis else n for n, axis in zip(largest.shape, spec))
  assert [tuple(s.data.shape) for s in largest.addressable_shards] == [quarter] * 8
  # Every stage from the single device's inputs, the base frames with feature caching (step 1 of 2 cached:
  # step 0 runs the whole UNet, so this covers both; only the base-frame stage compiles again on one device).
  # Float32 agreement, as sharded contractions sum in another order. Measured, as a fraction of each
  # output's largest value: text 1.7e-6, base-frame latents 3.5e-5, interpolated latents 8e-6; of the uint8
  # values, 0.03% of the key frames' and 0.003% of the decoded frames' differ, by one level.
  cached = dataclasses.replace(OPTIONS, base_frame_cache_interval=2)
  one_device = _stages(reference, given=expected, options=cached, last="base frames")["base frames"]
  assert not np.array_equal(one_device, expected["base frames"])  # the cached step ran
  sharded = _stages(pipeline, given=expected, options=cached)
  expected = {**expected, "base frames": one_device}
  np.testing.assert_allclose(sharded["text"], expected["text"], rtol=1e-4, atol=1e-5)
  for latents in ("base frames", "interpolation"):
    scale = np.abs(expected[latents]).max()
    np.testing.assert_allclose(sharded[latents], expected[latents], rtol=0, atol=3e-4 * scale, err_msg=latents)
  for pixels in ("key frames", "frames"):
    assert sharded[pixels].shape == expected[pixels].shape
    difference = _levels_apart(sharded[pixels], expected[pixels])
    assert difference.max() <= 1 and np.mean(difference > 0) < 0.01, (pixels, difference.max())


def test_offloading_makes_the_same_frames_and_keeps_one_stage_on_the_devices(single_device):
  reference, expected = single_device
  frames = expected["frames"]
  pipeline = _pipeline(offload=True)
  pipeline._compiled = reference._compiled  # the same programs (compiling them again would only cost time)
  assert pipeline.placed_models() == []
  np.testing.assert_array_equal(pipeline(PROMPTS, OPTIONS), frames)
  assert pipeline.placed_models() == ["video_movq"]  # the last stage's; T5 left after the text


@pytest.mark.slow  # two more sharded compiles of every stage; tests/kvjax/test_text_to_video.py chains on one device
def test_windows_chain_on_a_mesh_and_with_offloading(single_device):
  import dataclasses
  reference = single_device[0]
  options = dataclasses.replace(OPTIONS, windows=2)
  expected = reference(PROMPTS, options)
  assert expected.shape[1] == options.num_frames == 45 + 44
  offloaded = _pipeline(offload=True)
  offloaded._compiled = reference._compiled
  np.testing.assert_array_equal(offloaded(PROMPTS, options), expected)
  sharded = _pipeline(mesh=make_mesh(MESH))
  frames = sharded(PROMPTS, options)
  assert frames.shape == expected.shape
  # Window 2 ran window 1's programs (one base-frame and one interpolation program; see test_text_to_video.py).
  for name in ("base frames", "interpolation"):
    programs = [f for key, f in sharded._compiled.items() if key[0] == name]
    assert len(programs) == 1 and programs[0]._cache_size() <= 2, name


@pytest.mark.slow  # one more sharded compile (the base-frame stage with run-time adapters)
def test_lora_at_run_time_on_a_mesh_with_offloading_is_the_merged_adapter_of_one_device(single_device, tmp_path):
  from kvjax.conversion.adapters import write_adapter
  from kvjax.models.lora import LoraConfig, abstract_adapters, init_adapters, merge
  from kvjax.pipeline.pipeline_weights import with_adapters
  from kvjax.sharding import replicated
  reference = single_device[0]
  lora = LoraConfig(rank=2, targets=("cross_attention", "temporal"))
  rng = np.random.default_rng(5)
  adapters = jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                          init_adapters(abstract_adapters(CONFIG.keyframe, lora), lora))
  path = str(tmp_path / "adapter.safetensors")
  write_adapter(path, adapters, unet_config=CONFIG.keyframe, lora=lora, pipeline="tiny-two-level", step=1)
  base = random_weights(CONFIG, 1)
  text, null, _, length = reference.encode_text(PROMPTS)
  text, null = jax.device_get((text, null))
  key = jax.random.normal(jax.random.key(1), (3, 4, 4, 4))
  run = lambda p: np.asarray(p.base_frames(key if p.mesh is None else jax.device_put(key, replicated(p.mesh)),
                                           text, null, length, OPTIONS, jax.random.key(2)))
  reference.replace_weights(keyframe=merge(base.keyframe, adapters, lora.scale * 0.5))
  try:
    expected = run(reference)
  finally:
    reference.replace_weights(keyframe=base.keyframe)
  sharded = TextToVideo(CONFIG, with_adapters(CONFIG, base, [(path, 0.5)], mode="runtime"), reference.tokenizer,
                        mesh=make_mesh("data=2,fsdp=2,tensor=2"), offload=True)
  np.testing.assert_allclose(run(sharded), expected, rtol=0, atol=3e-4 * np.abs(expected).max())
