"""The embedded demo, judged by its pixels (kvjax.demo.judge): the named colour's shape moves the named way,
'high' motion goes farther than 'low', image-to-video keeps the picture and moves it, 45 frames move evenly.
`python bench/demo_quality.py` runs the same judges over more prompts and seeds and prints the rates."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from kvjax import demo
from kvjax.data import shapes
from kvjax.demo import judge

pytestmark = pytest.mark.skipif(not demo.installed(), reason="the embedded demo weights are not installed")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Ten prompts per batch (one compile of every stage serves every test): each colour twice, the directions in
# turn; the second seed shifts the directions, so the 20 cases cover every colour with every direction.
BATCH = 10


def _cases(shift):
  grid = judge.prompt_grid()
  return [grid[(4 * (i // 2) + (i + shift) % 4) % len(grid)] for i in range(BATCH)]


@pytest.fixture(scope="module", autouse=True)
def optimised_xla():
  """XLA's optimisations back on (tests/conftest.py turns them off): these tests run the shipped model for its
  full steps, which then take longer than compiling it."""
  import jax
  before = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture(scope="module")
def pipeline():
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.text.tokenizer import T5Tokenizer
  config, weights = load_pipeline_weights(demo.DEMO_WEIGHTS, tokens_length=16)
  return TextToVideo(config, weights, T5Tokenizer(os.path.join(demo.DEMO_WEIGHTS, "spiece.model"), 16))


def _generate(pipeline, cases, seed, images=None, **overrides):
  from kvjax.pipeline.pipeline_config import GenerationOptions
  options = GenerationOptions(**{**demo.DEMO_OPTIONS, "seed": seed, **overrides})
  return pipeline([judge.prompt(*case) for case in cases], options, images)


def _pictures(cases, seed=5):
  """The first frames the cases name, rendered as the training data draws them (fast shapes)."""
  rng = np.random.default_rng(seed)
  return [shapes.render_clip(shapes.sample_spec(rng, 45, colour=colour, shape=shape, direction=direction,
                                                speed_class="fast"), 1, 64, 64)[0] for colour, shape, direction in cases]


@pytest.fixture(scope="module")
def high(pipeline):
  """Motion high: shift 0 as image-to-video from rendered pictures (fps low, 12 frames), which the
  image-to-video and motion tests judge too, and shift 1 as text-to-video at fps medium (45 frames: the
  same base frames with three between each pair), which the evenness test judges too. Each run of 10 videos
  (the base frames' 50 steps most of it) serves every test it can: two generations fewer in the suite."""
  pictures = _pictures(_cases(0))
  return {0: (_cases(0), _generate(pipeline, _cases(0), seed=0, images=[Image.fromarray(p) for p in pictures])),
          1: (_cases(1), _generate(pipeline, _cases(1), seed=1, fps="medium")),
          "pictures": pictures}


def test_the_named_colour_moves_the_named_way(high):
  verdicts = [judge.judge_motion(video, colour, direction)
              for cases, videos in (high[0], high[1]) for (colour, _, direction), video in zip(cases, videos)]
  assert {v.colour for v in verdicts} == set(shapes.COLOURS) and {v.direction for v in verdicts} == set(shapes.DIRECTIONS)
  rate = np.mean([v.passed for v in verdicts])
  assert rate >= 0.8, [(v.colour, v.direction, round(v.along, 2)) for v in verdicts if not v.passed]


def test_high_motion_moves_farther_than_low(pipeline, high):
  # The same pictures and seed at motion low: motion reaches only the base frames, which both runs make
  # from the same first frames.
  cases, fast = high[0]
  slow = _generate(pipeline, cases, seed=0, images=[Image.fromarray(p) for p in high["pictures"]], motion="low")
  travel = lambda videos: np.array([judge.judge_motion(v, c, d).along for v, (c, _, d) in zip(videos, cases)])
  assert np.nanmean(travel(fast)) > np.nanmean(travel(slow)) + 0.05


def test_image_to_video_keeps_the_picture_and_moves_it(high):
  (cases, videos), pictures = high[0], high["pictures"]
  kept = [judge.first_frame_match(video[0], picture, colour) for video, picture, (colour, _, _) in
          zip(videos, pictures, cases)]
  moved = [judge.judge_motion(video, colour, direction).passed for video, (colour, _, direction) in zip(videos, cases)]
  assert np.mean(np.array(kept) > 0.5) >= 0.8, kept
  assert np.mean(moved) >= 0.7, moved


# At the shipped weights (the 64-wide interpolation UNet, 10 interpolation steps) these 10 step evenly in 10
# (largest step / median 1.8-2.9). Over 70 videos (seeds 0, 1 and 3-7, ten prompts each) the rate is 0.83,
# 0.5-1.0 a seed: the failures are jumps between base frames (the keyframe UNet) or largest steps of 4.1-5.3
# medians; interpolated frames that lost the named colour, the usual failure before it, are gone.
def test_medium_fps_makes_45_frames_that_move_evenly(high):
  cases, videos = high[1]
  assert videos.shape[:2] == (BATCH, 45)
  evenness = np.array([judge.step_evenness(video, colour) for video, (colour, _, _) in zip(videos, cases)])
  assert np.mean(evenness < 4) >= 0.8, evenness


def test_the_first_command_uses_the_embedded_demo(tmp_path):
  out = tmp_path / "demo.gif"
  env = {**os.environ, "KVJAX_COMPILE_CACHE": str(tmp_path / "cache"), "JAX_DISABLE_MOST_OPTIMIZATIONS": "0"}
  done = subprocess.run([sys.executable, "-m", "sample", "a blue square moving left", "--out", str(out)], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  assert "the embedded demo" in done.stderr
  with Image.open(out) as gif:
    assert gif.n_frames == 12 and gif.size == (64, 64)
