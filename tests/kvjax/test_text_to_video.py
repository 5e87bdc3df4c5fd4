"""The whole pipeline on the tiny preset with random weights: text-to-video, image-to-video, batches, seeds."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS, GenerationOptions
from kvjax.pipeline.images import fit_and_crop, to_uint8
from kvjax.pipeline.text_to_video import TextToVideo
from kvjax.pipeline.pipeline_weights import random_weights
from kvjax.pipeline.stages import BASE_FRAMES
from kvjax.text.hashed_tokenizer import HashedWordTokenizer

CONFIG = PIPELINE_PRESETS["tiny-two-level"]  # every stage and kind of layer, half the UNet levels to compile
OPTIONS = GenerationOptions(width=64, height=32, fps="medium", key_frame_steps=2, base_frame_steps=2,
                            interpolation_steps=2, seed=3)


@pytest.fixture(scope="module")
def pipeline():
  tokenizer = HashedWordTokenizer(CONFIG.text_encoder.vocab_size, CONFIG.tokens_length)
  return TextToVideo(CONFIG, random_weights(CONFIG), tokenizer)


STEPS = []  # (stage, done, total) reported from inside the compiled loops


def record_step(stage, done, total):
  # One function for every call: the stages compiled with it are reused (another function recompiles them).
  STEPS.append((stage, done, total))


@pytest.fixture(scope="module")
def two_prompts(pipeline):
  stages = []
  frames = pipeline(["a red fox in the snow", "waves"], OPTIONS, progress=lambda stage, s: stages.append(stage),
                    step_progress=record_step)
  return frames, stages, list(STEPS)


def test_text_to_video_runs_every_stage_for_a_batch(two_prompts):
  frames, stages, steps = two_prompts
  # every denoising step is reported from inside the compiled loops
  assert sorted(set(steps)) == sorted({(stage, done, 2) for stage in ("key frame", "base frames", "interpolation 1")
                                       for done in (1, 2)})
  assert stages == ["text", "key frame", "encode key frame", "base frames", "interpolation 1", "decode"]
  assert frames.shape == (2, 45, 32, 64, 3) and frames.dtype == np.uint8
  assert not np.array_equal(frames[0], frames[1])  # different prompts, different videos


class CompileCounter:
  """Counts XLA compilations (backend compiles) while it is open."""

  def __enter__(self):
    self.count = 0
    self._listener = lambda event, seconds, **kw: setattr(self, "count", self.count + (
        event == "/jax/core/compile/backend_compile_duration"))
    jax.monitoring.register_event_duration_secs_listener(self._listener)
    return self

  def __exit__(self, *exc):
    jax.monitoring.unregister_event_duration_listener(self._listener)


def test_the_same_seed_reproduces_the_videos_without_a_compile(pipeline, two_prompts):
  frames = two_prompts[0]
  with CompileCounter() as compiles:
    again = pipeline(["a red fox in the snow", "waves"], OPTIONS, step_progress=record_step)
  np.testing.assert_array_equal(frames, again)
  assert compiles.count == 0


def test_other_prompt_lengths_and_settings_reuse_the_compiled_stages(pipeline, two_prompts):
  other = dataclasses.replace(OPTIONS, seed=11, motion="high", noise_augmentation=5, key_frame_guidance_scale=2.0,
                              guidance_weight_prompt=3.0, guidance_weight_image=1.0, interpolation_guidance_scale=1.5)
  with CompileCounter() as compiles:
    frames = pipeline(["a much longer prompt about a red fox running in the deep snow", "sea"], other,
                      step_progress=record_step)
  assert compiles.count == 0
  assert frames.shape == two_prompts[0].shape and not np.array_equal(frames, two_prompts[0])


def test_replaced_unet_weights_sample_without_a_compile(pipeline, two_prompts):
  # What a training run's validation does at each validation step (kvjax/training/validation.py).
  other = random_weights(CONFIG, seed=1)
  with pytest.raises(ValueError, match="not text_encoder"):
    pipeline.replace_weights(text_encoder=other.text_encoder)
  pipeline.replace_weights(keyframe=other.keyframe, interpolation=other.interpolation)
  try:
    with CompileCounter() as compiles:
      frames = pipeline(["a red fox in the snow", "waves"], OPTIONS, step_progress=record_step)
  finally:
    original = random_weights(CONFIG)
    pipeline.replace_weights(keyframe=original.keyframe, interpolation=original.interpolation)
  assert compiles.count == 0 and not np.array_equal(frames, two_prompts[0])


def test_padding_the_context_keeps_the_reference_length_where_it_matters(pipeline):
  # The text pooling's mean is over the reference's L positions: padded zeros with L given equal the cut.
  (context, mask), null, _, length = pipeline.encode_text(["a red fox", "waves and more waves"])
  L = int(length)
  assert context.shape[1] == CONFIG.tokens_length and 1 < L < CONFIG.tokens_length
  unet, params = pipeline.programs.keyframe_unet, pipeline._weights(BASE_FRAMES).keyframe
  x = jax.random.normal(jax.random.key(0), (2, 8, 16, CONFIG.keyframe.num_channels))
  time = jnp.array([10.0, 500.0])
  cut = unet.apply({"params": params}, x, time, context[:, :L], mask[:, :L], input_layer="image")
  padded = unet.apply({"params": params}, x, time, context, mask, input_layer="image", context_length=length)
  np.testing.assert_allclose(padded, cut, rtol=1e-5, atol=1e-5)


def test_image_to_video_skips_the_key_frame(pipeline):
  rng = np.random.default_rng(0)
  image = Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8))
  stages = []
  options = GenerationOptions(width=64, height=32, fps="low", key_frame_steps=2, base_frame_steps=2, seed=1)
  frames = pipeline("a boat", options, images=[image], progress=lambda stage, s: stages.append(stage))
  assert stages == ["text", "encode key frame", "base frames", "decode"]
  assert frames.shape == (1, 12, 32, 64, 3)


def test_cache_interval_1_is_the_uncached_path_bit_for_bit(pipeline, two_prompts):
  every_step = dataclasses.replace(OPTIONS, key_frame_cache_interval=1, base_frame_cache_interval=1,
                                   interpolation_cache_interval=1, cache_schedule="ends")
  with CompileCounter() as compiles:
    frames = pipeline(["a red fox in the snow", "waves"], every_step, step_progress=record_step)
  assert compiles.count == 0  # the very programs of the uncached run
  np.testing.assert_array_equal(frames, two_prompts[0])


def test_a_cached_schedule_compiles_once_and_its_cached_step_repeats_a_full_one(pipeline):
  # Image-to-video as the test above, so that only the base frames compile again, with their cache.
  image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), dtype=np.uint8))
  uncached = GenerationOptions(width=64, height=32, fps="low", key_frame_steps=2, base_frame_steps=2, seed=1)
  cached = dataclasses.replace(uncached, base_frame_cache_interval=2)  # step 0 whole, step 1 cached
  frames = pipeline("a boat", cached, images=[image])
  assert frames.shape == (1, 12, 32, 64, 3) and not np.array_equal(frames, pipeline("a boat", uncached, images=[image]))
  with CompileCounter() as compiles:
    pipeline("another boat", dataclasses.replace(cached, seed=7, guidance_weight_prompt=3.0, motion="high"),
             images=[image])
  assert compiles.count == 0
  # A full step that keeps the deep features is the uncached step, and a cached step on the same input as
  # that full step repeats it, bit for bit (the shallow levels are wired as in the whole UNet).
  unet, params = pipeline.programs.keyframe_unet, pipeline._weights(BASE_FRAMES).keyframe
  (context, mask), *_ = pipeline.encode_text(["a red fox", "waves"])
  inputs = (jax.random.normal(jax.random.key(0), (2, 8, 16, CONFIG.keyframe.num_channels)), jnp.array([10.0, 500.0]),
            context, mask)

  @jax.jit
  def steps(params):
    apply = lambda **kw: unet.apply({"params": params}, *inputs, input_layer="image", **kw)
    kept, deep = apply(keep_deep_features=True)
    return apply(), kept, apply(deep_features=deep)[0]
  plain, kept, cached_out = steps(params)
  np.testing.assert_array_equal(kept, plain)
  np.testing.assert_array_equal(cached_out, plain)


def test_bad_sizes_and_options_are_named(pipeline):
  m = CONFIG.size_multiple
  with pytest.raises(ValueError, match=f"multiples of {m}"):
    pipeline("x", GenerationOptions(width=m + 4, height=m))
  with pytest.raises(ValueError, match="fps must be one of"):
    GenerationOptions(fps="ultra")
  with pytest.raises(ValueError, match="motion must be one of"):
    GenerationOptions(motion="normal")
  with pytest.raises(ValueError, match="1 images for 2 prompts"):
    pipeline(["a", "b"], OPTIONS, images=[Image.new("RGB", (64, 32))])


def test_fit_and_crop_follows_the_reference():
  # 200x100 to 64x32: rf = min(200/64, 100/32) = 3.125 -> 64x32 exactly, no crop.
  image = Image.fromarray(np.full((100, 200, 3), 255, np.uint8))
  out = fit_and_crop(image, 64, 32)
  assert out.shape == (32, 64, 3) and np.allclose(out, 1.0)
  # A smaller image is not enlarged: the crop pads it with black (-1).
  small = fit_and_crop(Image.fromarray(np.full((16, 16, 3), 255, np.uint8)), 32, 32)
  assert small.shape == (32, 32, 3) and small[0, 0, 0] == -1 and small[16, 16, 0] == 1
  np.testing.assert_array_equal(to_uint8(np.array([-1.0, 0.0, 0.999, 2.0])), [0, 127, 254, 255])


# --- long videos: windows chained in latent space ---------------------------------------------------------

@pytest.fixture(scope="module")
def two_windows(pipeline, two_prompts):
  """The batch of `two_prompts` over two windows, the second video's prompt changed in window 2; after
  `two_prompts`, so every program but the 44-frame window's decode is already compiled."""
  stages, carried = [], []
  options = dataclasses.replace(OPTIONS, windows=2)
  before = set(pipeline._compiled)
  frames = pipeline(["a red fox in the snow", ["waves", "a boat at sea"]], options,
                    progress=lambda stage, s: stages.append(stage), step_progress=record_step,
                    next_condition=lambda last, pixels: carried.append((last, pixels)) or last)
  return frames, stages, carried, set(pipeline._compiled) - before


def test_window_one_is_the_one_window_video_and_the_seam_frame_is_not_repeated(pipeline, two_prompts, two_windows):
  frames, stages, carried, new_programs = two_windows
  assert frames.shape == (2, 45 + 44, 32, 64, 3) == (2, dataclasses.replace(OPTIONS, windows=2).num_frames, 32, 64, 3)
  np.testing.assert_array_equal(frames[:, :45], two_prompts[0])  # the same seed's one-window video, exactly
  # Window 2 goes on from window 1's last frame (frame 44, not repeated): its first new frame is another.
  (last, pixels), = carried
  assert last.shape == (2, 8, 16, 4) and pixels.shape == (2, 45, 32, 64, 3)
  assert all(np.abs(frames[i, 45].astype(int) - frames[i, 44]).max() > 0 for i in range(2))
  assert stages == ["text", "text [2/2]", "key frame", "encode key frame", "base frames [1/2]",
                    "interpolation 1 [1/2]", "decode [1/2]", "base frames [2/2]", "interpolation 1 [2/2]", "decode [2/2]"]
  # The windows share the stages' programs (one base-frame and one interpolation program), each with one
  # argument signature from the first chained run on (every window's inputs committed alike); a second
  # chained run compiles nothing (test_each_window_reads_its_own_prompt).
  for name in ("base frames", "interpolation"):
    assert not [key for key in new_programs if key[0] == name], name
    programs = [f for key, f in pipeline._compiled.items() if key[0] == name]
    assert all(program._cache_size() == 1 for program in programs), name


def test_each_window_reads_its_own_prompt(pipeline, two_windows):
  frames = two_windows[0]
  with CompileCounter() as compiles:
    same = pipeline(["a red fox in the snow", "waves"], dataclasses.replace(OPTIONS, windows=2),
                    step_progress=record_step)
  assert compiles.count == 0  # every window's programs were compiled by the run before
  np.testing.assert_array_equal(same[:, :45], frames[:, :45])
  np.testing.assert_array_equal(same[0], frames[0])  # the first video's prompt did not change
  assert not np.array_equal(same[1, 45:], frames[1, 45:])  # the second's window 2 read "a boat at sea"


def test_bad_windows_and_prompts_per_window_are_named(pipeline):
  from kvjax.pipeline.text_to_video import window_prompts
  assert window_prompts(["a", ["b", "c"]], 3) == [("a", "a", "a"), ("b", "c", "c")]
  with pytest.raises(ValueError, match=r"windows \(--windows\) must be in \[1, 20\]"):
    GenerationOptions(windows=0)
  with pytest.raises(ValueError, match=r"windows \(--windows\) must be in \[1, 20\]"):
    GenerationOptions(windows=21)
  with pytest.raises(ValueError, match=r"video 2: 3 prompts for 2 windows"):
    pipeline(["a", ["b", "c", "d"]], dataclasses.replace(OPTIONS, windows=2))
  with pytest.raises(ValueError, match=r"video 1: 2 prompts for 1 window \("):
    pipeline([["a", "b"]], OPTIONS)
  for overlap in (0, 7):
    with pytest.raises(ValueError, match=r"window_overlap \(--window-overlap\) must be in \[1, 6\] base frames"):
      GenerationOptions(window_overlap=overlap)
  with pytest.raises(ValueError, match=r"next_condition replaces one carried latent: window_overlap 3 carries 3 "
                                       r"\(give window_overlap=1\)"):
    pipeline(["a"], dataclasses.replace(OPTIONS, windows=2, window_overlap=3), next_condition=lambda *a: a[0])


def test_an_overlap_of_base_frames_holds_the_window_befores_last_frames(pipeline, two_prompts, two_windows,
                                                                       monkeypatch):
  # --window-overlap 3: window 2 holds window 1's last 3 base latents as its first 3 frames and adds 9, with
  # the programs window 1 compiled (at most its 36-frame decode's chunks are new).
  calls, base_frames = [], pipeline.base_frames
  monkeypatch.setattr(pipeline, "base_frames", lambda *a, **kw: calls.append((kw["held"], base_frames(*a, **kw)))
                      or calls[-1][1])
  options = dataclasses.replace(OPTIONS, windows=2, window_overlap=3)
  before = set(pipeline._compiled)
  frames = pipeline(["a red fox in the snow", "waves"], options, step_progress=record_step)
  assert frames.shape == (2, 45 + 36, 32, 64, 3) == (2, options.num_frames, 32, 64, 3)
  np.testing.assert_array_equal(frames[:, :45], two_prompts[0])
  (none, first), (held, second) = calls
  assert none is None and held.shape == (2, 3, 8, 16, 4)
  np.testing.assert_array_equal(held, first[:, 9:])
  np.testing.assert_allclose(second[:, :3], held, atol=1e-4)  # held: they come back within rounding
  assert {key[0] for key in set(pipeline._compiled) - before} <= {"decode"}
  assert all(f._cache_size() == 1 for key, f in pipeline._compiled.items() if key[0] == "base frames")


# --- LoRA adapters applied at run time ---------------------------------------------------------------------

def test_lora_at_run_time_is_the_merged_adapter_and_a_new_scale_compiles_nothing(pipeline, two_prompts, tmp_path):
  # The base-frame stage alone, its runtime program compiled once by a second pipeline; the merged weights go
  # through the fixture's compiled program (replace_weights: no compile).
  from kvjax.conversion.adapters import write_adapter
  from kvjax.models.lora import LoraConfig, abstract_adapters, init_adapters, merge
  from kvjax.pipeline.pipeline_weights import with_adapters
  lora = LoraConfig(rank=2, alpha=4.0, targets=("self_attention", "cross_attention", "temporal"))
  rng = np.random.default_rng(5)
  adapters = jax.tree.map(lambda x: 0.1 * rng.standard_normal(x.shape).astype(np.float32),
                          init_adapters(abstract_adapters(CONFIG.keyframe, lora), lora))
  path = str(tmp_path / "adapter.safetensors")
  write_adapter(path, adapters, unet_config=CONFIG.keyframe, lora=lora, pipeline="tiny-two-level", step=1)
  base = pipeline._placed  # the fixture's weights, on the device
  runtime = TextToVideo(CONFIG, with_adapters(CONFIG, base, [(path, 0.5)], mode="runtime"), pipeline.tokenizer)
  text, null, _, length = pipeline.encode_text(["a red fox in the snow", "waves"])
  key = jax.random.normal(jax.random.key(1), (2, 8, 16, 4))
  run = lambda p: np.asarray(p.base_frames(key, text, null, length, OPTIONS, jax.random.key(2),
                                           step_progress=record_step))
  try:
    merged = {}
    for scale in (0.5, -1.0):
      pipeline.replace_weights(keyframe=merge(base.keyframe, adapters, lora.scale * scale))
      merged[scale] = run(pipeline)
  finally:
    pipeline.replace_weights(keyframe=base.keyframe)
  np.testing.assert_allclose(run(runtime), merged[0.5], rtol=1e-4, atol=1e-4)
  runtime.set_lora_scales(keyframe=[-1.0])
  with CompileCounter() as compiles:
    other = run(runtime)
  assert compiles.count == 0
  assert [f._cache_size() for key, f in runtime._compiled.items()] == [1]
  np.testing.assert_allclose(other, merged[-1.0], rtol=1e-4, atol=1e-4)
  assert np.abs(merged[0.5] - merged[-1.0]).max() > 1e-2  # the scale does change the frames
  with pytest.raises(ValueError, match="2 scales for the 1 adapters applied at run time to the keyframe UNet"):
    runtime.set_lora_scales(keyframe=[1.0, 1.0])
  # On a mesh the adapters are placed by the rule table (A its kernel's input axis, B its output axis), the
  # scales replicated (placement only: the sharded stages compile in tests/kvjax/test_text_to_video_mesh.py).
  from kvjax.sharding import make_mesh
  sharded = TextToVideo(CONFIG, with_adapters(CONFIG, base, [(path, 0.5)], mode="runtime"), pipeline.tokenizer,
                        mesh=make_mesh("data=2,fsdp=2,tensor=2"))
  sharded.set_lora_scales(keyframe=[2.0])
  placed = sharded._placed.keyframe
  module = placed.adapters[0]["down_samples_1"]["resnet_attn_blocks_0_1"]["attention"]
  assert tuple(module["to_key"]["kernel_lora_a"].sharding.spec) == ("fsdp", None)
  assert tuple(module["to_query"]["kernel_lora_b"].sharding.spec) == (None, "tensor")
  assert float(placed.strengths[0]) == 2.0 and placed.strengths[0].sharding.is_fully_replicated
