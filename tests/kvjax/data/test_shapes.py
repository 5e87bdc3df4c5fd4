"""kvjax.data.shapes: the moving-shapes world is seeded, covers every attribute, keeps its shape in the
frame, its judges recover the motion, ShapeClips resumes and shards without changing the global batch, and
its speeds order the motion scores that data preparation measures."""

import numpy as np
import pytest

from kvjax.data import shapes, transforms

RESOLUTIONS = ((64, 64), (64, 96), (96, 64), (128, 128))
LENGTHS = (4, 12, 48)


def spec_for(seed, num_frames=12, resolution=(64, 64), **fixed):
  return shapes.sample_spec(np.random.default_rng(seed), num_frames, resolution=resolution, **fixed)


def test_seeded():
  assert spec_for(3) == spec_for(3) and spec_for(3) != spec_for(4)
  spec = spec_for(3, background="textured")
  np.testing.assert_array_equal(shapes.render_clip(spec, 12, 64, 64), shapes.render_clip(spec, 12, 64, 64))
  assert shapes.ShapeSpec.from_json(spec.to_json()) == spec
  a, b = shapes.ShapeClips(2, 4, (32, 32), seed=7), shapes.ShapeClips(2, 4, (32, 32), seed=7)
  for _ in range(2):
    x, y = next(a), next(b)
    np.testing.assert_array_equal(x["frames"], y["frames"])
    assert x["caption"].tolist() == y["caption"].tolist()
  assert next(shapes.ShapeClips(2, 4, (32, 32), seed=8))["caption"].tolist() != next(
      shapes.ShapeClips(2, 4, (32, 32), seed=7))["caption"].tolist()


def test_every_attribute_is_drawn():
  specs = [spec_for([1, i]) for i in range(150)]
  for field, values in (("shape", shapes.SHAPES), ("colour", shapes.COLOURS), ("direction", shapes.DIRECTIONS),
                        ("speed_class", shapes.SPEED_CLASSES), ("background", shapes.BACKGROUNDS)):
    assert {getattr(spec, field) for spec in specs} == set(values), field


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_every_colour_is_found_on_every_background(shape):
  for i, colour in enumerate(shapes.COLOURS):
    for background in shapes.BACKGROUNDS:
      spec = spec_for([2, i], 2, shape=shape, colour=colour, background=background)
      frames = shapes.render_clip(spec, 2, 64, 64)
      masks = {name: shapes.colour_mask(frames, name).sum() for name in shapes.COLOURS}
      assert masks[colour] > 2 * 40 and sum(masks.values()) == masks[colour], (colour, background, masks)


def test_the_shape_stays_in_the_frame_and_travels():
  for i in range(90):
    num_frames, resolution = LENGTHS[i % 3], RESOLUTIONS[(i // 3) % 4]
    spec = spec_for([3, i], num_frames, resolution)
    height, width = resolution
    first = shapes.coverage(spec, 0, height, width)
    for t in (0, num_frames - 1):  # straight constant motion: the end points are the extremes
      alpha = shapes.coverage(spec, t, height, width)
      edges = np.concatenate([alpha[0], alpha[-1], alpha[:, 0], alpha[:, -1]])
      assert edges.max() == 0, (spec, t)
      assert abs(alpha.sum() - first.sum()) < 0.02 * first.sum()  # nothing cut off
    side = shapes.frame_extent(*resolution)[0 if spec.direction in ("up", "down") else 1]
    travel = spec.speed * (num_frames - 1)
    low, high = shapes.SPEED_TRAVEL[spec.speed_class]
    assert low * side - 1e-6 <= travel <= high * side + 1e-6
    if spec.speed_class != "slow":
      assert travel >= side / 3
    # Starts on the side opposite its direction.
    start = spec.start[0] if spec.direction in ("up", "down") else spec.start[1]
    assert (start < side / 2) == (spec.direction in ("right", "down"))


def test_antialiased_and_sub_pixel():
  spec = spec_for(5, 12, shape="circle", direction="right", speed_class="slow", background="dark")
  alpha = shapes.coverage(spec, 0, 64, 64)
  assert ((alpha > 0) & (alpha < 1)).sum() > 10  # soft edges
  assert abs(alpha.sum() - np.pi * (spec.size / 2) ** 2) < 0.5  # analytic area at half scale
  shifted = shapes.coverage(spec, 0.1, 64, 64)  # a tenth of a frame moves the picture
  assert 0 < np.abs(shifted - alpha).max() < 0.5


def test_centroid_track_recovers_the_motion():
  for i in range(36):
    num_frames, resolution = LENGTHS[i % 3], RESOLUTIONS[(i // 3) % 4]
    spec = spec_for([6, i], num_frames, resolution)
    frames = shapes.render_clip(spec, num_frames, *resolution)
    track = shapes.centroid_track(frames, spec.colour)
    assert not np.isnan(track).any()
    scale = min(resolution) / shapes.REFERENCE_SIDE
    dy, dx = shapes.DIRECTIONS[spec.direction]
    expected = np.array([dx, dy]) * spec.speed * (num_frames - 1) * scale
    np.testing.assert_allclose(shapes.dominant_motion(track), expected, atol=0.6)
    if spec.shape != "triangle":  # symmetric shapes: the centroid is the centre
      np.testing.assert_allclose(track[0], np.array(spec.start) * scale, atol=0.5)
  other = next(name for name in shapes.COLOURS if name != spec.colour)
  assert np.isnan(shapes.centroid_track(frames, other)).all()
  assert np.isnan(shapes.dominant_motion(shapes.centroid_track(frames, other))).all()


def test_captions():
  spec = spec_for(7, colour="red", shape="circle", direction="right", speed_class="medium")
  assert shapes.caption(spec) == "a red circle moving right"
  fast = spec_for(7, colour="blue", shape="triangle", direction="up", speed_class="fast")
  assert shapes.caption(fast) == "a blue triangle moving up quickly"
  assert shapes.caption(fast, speed_words=False) == "a blue triangle moving up"
  for i in range(30):
    spec = spec_for([7, i])
    text = shapes.caption(spec)
    assert text.startswith(f"a {spec.colour} {spec.shape} moving {spec.direction}")
    assert shapes.parse_caption(text) == {"colour": spec.colour, "shape": spec.shape, "direction": spec.direction,
                                          "speed_class": spec.speed_class}
  with pytest.raises(shapes.ShapeSpecError, match="is not 'a <colour>"):
    shapes.parse_caption("a purple circle moving right")


def test_size_words_draw_larger_shapes_outside_the_world():
  """A size word (the fine-tuning walkthrough's new word) draws its size range, says it in the caption, and
  stays out of the world's own draws; a huge fast shape travels as far as the frame leaves room for."""
  for i in range(12):
    spec = spec_for([9, i], size_word="huge", speed_class="fast")
    assert shapes.SIZE_WORDS["huge"][0] <= spec.size <= shapes.SIZE_WORDS["huge"][1]
    assert shapes.caption(spec).startswith(f"a huge {spec.colour} {spec.shape} moving {spec.direction}")
    assert shapes.ShapeSpec.from_json(spec.to_json()) == spec
    frames = shapes.render_clip(spec, 12, 64, 64)
    assert shapes.colour_mask(frames[0], spec.colour).mean() > 0.06  # judge.HUGE_AREA
    assert not np.isnan(shapes.centroid_track(frames, spec.colour)).any()  # wholly in the frame throughout
  assert all(spec_for([9, i]).size_word == "" for i in range(12))
  old_json = {k: v for k, v in spec_for(9).to_json().items() if k != "size_word"}  # written before size words
  assert shapes.ShapeSpec.from_json(old_json) == spec_for(9)
  with pytest.raises(shapes.ShapeSpecError, match="size_word 'tiny' is not one of huge"):
    spec_for(9, size_word="tiny")


def test_errors_name_the_problem():
  spec = spec_for(8)
  with pytest.raises(shapes.ShapeSpecError, match="ShapeSpec.shape 'hexagon' is not one of"):
    shapes.ShapeSpec(**{**spec.to_json(), "shape": "hexagon"})
  with pytest.raises(shapes.ShapeSpecError, match="background_rgb"):
    shapes.ShapeSpec(**{**spec.to_json(), "background_rgb": (0, 0, 0)})
  with pytest.raises(shapes.ShapeSpecError, match="colour 'pink'"):
    spec_for(8, colour="pink")
  with pytest.raises(shapes.ShapeSpecError, match="num_frames"):
    spec_for(8, 1)
  with pytest.raises(shapes.ShapeSpecError, match="shard_index"):
    shapes.ShapeClips(2, 4, (32, 32), seed=0, shard_index=2, shard_count=2)


def test_backgrounds_are_not_black_borders():
  config = transforms.TransformConfig()
  for background in shapes.BACKGROUNDS:
    spec = spec_for(9, 12, (64, 96), background=background, shape="triangle", speed_class="slow")
    profile = transforms.BorderProfile()
    for frame in shapes.render_clip(spec, 12, 64, 96):
      profile.update(frame)
    assert transforms.detect_borders(*profile.span(0, 12), config).is_full(96, 64), background


def test_shape_clips_batches_and_resume():
  clips = shapes.ShapeClips(3, 5, (32, 48), seed=1)
  batches = [next(clips) for _ in range(3)]
  assert batches[0]["frames"].shape == (3, 5, 32, 48, 3) and batches[0]["frames"].dtype == np.uint8
  assert batches[0]["caption"].shape == (3,) and batches[0]["motion_score"].dtype == np.float32
  for captions, scores in ((b["caption"], b["motion_score"]) for b in batches):
    for text, score in zip(captions, scores):
      shapes.parse_caption(str(text))
      assert score > 0
  still = next(shapes.ShapeClips(3, 1, (32, 32), seed=1))  # images: one frame, no motion
  assert still["frames"].shape == (3, 1, 32, 32, 3) and (still["motion_score"] == 0).all()
  resumed = shapes.ShapeClips(3, 5, (32, 48), seed=1, start_batch=1)  # a run resumed after one batch
  for expected in batches[1:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["frames"], expected["frames"])
    np.testing.assert_array_equal(got["motion_score"], expected["motion_score"])


def test_the_global_batch_does_not_depend_on_the_shards():
  whole = shapes.ShapeClips(4, 3, (32, 32), seed=2)
  halves = [shapes.ShapeClips(2, 3, (32, 32), seed=2, shard_index=k, shard_count=2) for k in range(2)]
  quarters = [shapes.ShapeClips(1, 3, (32, 32), seed=2, shard_index=k, shard_count=4) for k in range(4)]
  for _ in range(2):
    expected = next(whole)
    for parts in (halves, quarters):
      got = [next(part) for part in parts]
      np.testing.assert_array_equal(np.concatenate([g["frames"] for g in got]), expected["frames"])
      assert sum((g["caption"].tolist() for g in got), []) == expected["caption"].tolist()


def test_speeds_order_the_measured_motion_scores():
  """kvjax.data.motion's Farneback score on rendered clips grows with the speed class for every scene, and
  the analytic score (ShapeClips) is within a factor of two of it."""
  for i, (shape, colour, background) in enumerate([("circle", "blue", "textured"), ("square", "white", "dark"),
                                                   ("triangle", "red", "plain"), ("circle", "yellow", "dark")]):
    measured, analytic = [], []
    for speed_class in shapes.SPEED_CLASSES:
      spec = spec_for([10, i], 12, shape=shape, colour=colour, background=background, speed_class=speed_class)
      measured.append(shapes.motion_score(shapes.render_clip(spec, 12, 64, 64)))
      analytic.append(shapes.expected_motion_score(spec))
    assert measured[0] < measured[1] < measured[2], (shape, measured)
    assert analytic[0] < analytic[1] < analytic[2]
    ratios = np.array(measured) / np.array(analytic)
    assert ((ratios > 0.5) & (ratios < 2)).all(), (shape, measured, analytic)
