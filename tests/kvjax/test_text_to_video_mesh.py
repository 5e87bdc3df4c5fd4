"""The pipeline sharded over 8 simulated CPU devices, and with offloading: what one device computes.

The "tiny-two-level" pipeline keeps the SPMD compiles short; its UNets have every kind of layer the pipeline shards.
"""


import jax
import numpy as np
import pytest

from kvjax.pipeline.config import PIPELINE_PRESETS, GenerationOptions
from kvjax.pipeline.text_to_video import TextToVideo
from kvjax.pipeline.weights import random_weights
from kvjax.sharding import make_mesh
from kvjax.text.hashed_tokenizer import HashedWordTokenizer

CONFIG = PIPELINE_PRESETS["tiny-two-level"]
# DDIM (no step noise): random weights amplify rounding through DDPM's noise and the MoVQ's codebook, which
# would turn float32 summation-order differences into other videos.
OPTIONS = GenerationOptions(width=32, height=32, fps="medium", key_frame_steps=2, base_frame_steps=2,
                            interpolation_steps=1, sampler="ddim", seed=5)
PROMPTS = ["a red fox in the snow", "waves", "a boat"]  # 3 prompts: batches that do not divide the mesh axes


def _pipeline(**kwargs):
  return TextToVideo(CONFIG, random_weights(CONFIG, 1), HashedWordTokenizer(CONFIG.text_encoder.vocab_size,
                                                                            CONFIG.tokens_length), **kwargs)


@pytest.fixture(scope="module")
def single_device():
  pipeline = _pipeline()
  return pipeline, pipeline(PROMPTS, OPTIONS)



def test_a_sharded_pipeline_places_weights_once_and_makes_the_frames_of_one_device(single_device):
  reference, frames = single_device
  pipeline = _pipeline(mesh=make_mesh("data=2,fsdp=2,tensor=2"))
  # The weights were placed once, split as the rule table says: the keyframe UNet's largest kernel over
  # fsdp and tensor, each device holding a quarter of it.
  largest = max(jax.tree.leaves(pipeline._placed.keyframe), key=lambda a: a.size)
  spec = tuple(largest.sharding.spec) + (None,) * (largest.ndim - len(largest.sharding.spec))
  assert {"fsdp", "tensor"} <= set(spec)
  quarter = tuple(n // 2 if axis else n for n, axis in zip(largest.shape, spec))
  assert [tuple(s.data.shape) for s in largest.addressable_shards] == [quarter] * 8
  # The text stage from the same prompts: float32 agreement (sharded contractions sum in another order).
  text = reference.encode_text(PROMPTS)[0]
  sharded_text = pipeline.encode_text(PROMPTS)
  np.testing.assert_allclose(sharded_text[0][0], text[0], rtol=1e-4, atol=1e-5)
  # The whole pipeline's frames: float32 summation order differs between the sharded and the single-device
  # contractions, so a pixel may round to a neighbouring level; measured: 1.5% of the values differ, by 1
  # (a handful by 2), none by more.
  sharded_frames = pipeline(PROMPTS, OPTIONS)
  difference = np.abs(sharded_frames.astype(np.int32) - frames.astype(np.int32))
  assert sharded_frames.shape == frames.shape and difference.max() <= 2 and np.mean(difference > 0) < 0.03


def test_offloading_makes_the_same_frames_and_keeps_one_stage_on_the_devices(single_device):
  reference, frames = single_device
  pipeline = _pipeline(offload=True)
  pipeline._compiled = reference._compiled  # the same programs (compiling them again would only cost time)
  assert pipeline.placed_models() == []
  np.testing.assert_array_equal(pipeline(PROMPTS, OPTIONS), frames)
  assert pipeline.placed_models() == ["video_movq"]  # the last stage's; T5 left after the text
