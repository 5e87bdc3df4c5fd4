"""Generates videos from text (and optionally a first-frame image) with Kandinsky Video 1.1.

  python -m sample "a red fox running through snow" --out fox.mp4 --weights converted/ --tokenizer spiece.model
  python -m sample "waves at sunset" --image beach.jpg --fps medium --motion high --out waves.gif --weights converted/

  python -m sample "a blue square moving left" --out demo.gif         # the embedded demo weights
  python -m sample "a red circle moving right slowly" --windows 3 --fps medium --out long.gif   # 3 windows

--out takes .mp4, .gif, or a folder (no suffix) of PNG frames; with several prompts, files are numbered.
Without --weights, the embedded demo runs: a small Kandinsky Video that kvjax trained on a synthetic world of
moving shapes (circle, square, triangle; red, green, blue, yellow, white; moving left, right, up, down;
`python -m train.demo` rebuilds it), 64x64. --weights random runs the tiny preset with RANDOM weights (the
output is noise): a smoke test of the whole path.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from kvjax.cli import program_name
from kvjax.diffusion import feature_cache
from kvjax.diffusion.loop import SAMPLERS
from kvjax.layers.attention import ATTENTION_IMPLEMENTATIONS
from kvjax.pipeline.pipeline_config import (FPS_PASSES, MAX_FRAME_PIXELS, MAX_SIDE, MAX_WINDOWS, MOTION_SCORES,
                                            MAX_WINDOW_OVERLAP, RANDOM_WEIGHTS_OPTIONS, SAMPLING_DEFAULTS, WINDOW_SECONDS,
                                            GenerationOptions, read_sampling_defaults)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=program_name("sample", __package__), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("prompts", nargs="+", help="one or more prompts (generated as one batch); with "
                 "--prompt-per-window, one video's prompts, one per window")
  p.add_argument("--out", required=True, help="output .mp4, .gif, or folder for PNG frames")
  p.add_argument("--image", nargs="+", help="first-frame image(s) for image-to-video (one, or one per prompt)")
  add_model_options(p)
  add_generation_options(p)
  p.add_argument("--overwrite", action="store_true", help="replace existing outputs")
  p.add_argument("--progress", action="store_true", help="a bar for every denoising step (a host callback in "
                 "each step; default: when stderr is a terminal)")
  return p


def add_model_options(p: argparse.ArgumentParser) -> None:
  """The options that make the pipeline (weights, precision, devices, kernels, compile cache): this program's
  and the app's (sample/app.py), which makes one pipeline for all its visitors."""
  p.add_argument("--weights", help="folder written by `python -m convert all`, or 'random' (the tiny preset, "
                 "random weights); default: the embedded demo")
  p.add_argument("--image-movq", help="converted image MoVQ folder replacing the one of --weights (e.g. from "
                 "`python -m train.export`)")
  p.add_argument("--video-movq", help="converted video MoVQ decoder folder replacing the one of --weights")
  p.add_argument("--tokenizer", help="SentencePiece model of FLAN-UL2 (spiece.model); default: WEIGHTS/spiece.model")
  p.add_argument("--bf16", action="store_true", help="compute every model in bfloat16 (T5, UNets, MoVQs; "
                 "bench/bf16_error.py measures the error against float32)")
  p.add_argument("--quantize", metavar="int8|MODEL=int8,...", help="weight-only int8 (not the reference): int8 "
                 "for T5 and both UNets, or per model, e.g. t5=int8-all,keyframe=int8 (models: t5, keyframe, "
                 "interpolation, image-movq, video-movq; int8-all: also the layers int8 keeps in float, e.g. "
                 "T5's wo); quantized as they load (a folder written by `convert --quantize int8` needs no flag); "
                 "bench/int8_error.py measures the error")
  p.add_argument("--mesh", help="shard weights and batches over the devices, e.g. data=2,fsdp=2,tensor=2 (axes "
                 "data, fsdp, tensor; default: one device)")
  p.add_argument("--offload", action="store_true", help="keep the weights in host memory and place only the "
                 "running stage's models on the devices (for small accelerators; the same frames)")
  p.add_argument("--attention", choices=ATTENTION_IMPLEMENTATIONS, default="xla", help="attention kernels: xla "
                 "(ours, the reference's arithmetic), jax (jax.nn.dot_product_attention's choice) or cudnn (fused, "
                 "NVIDIA GPUs, with --bf16)")
  p.add_argument("--lora", action="append", metavar="FILE[:SCALE]", help="a LoRA adapter (`python -m train.export` "
                 "of a LoRA run) on the UNet it was made for, at strength SCALE (default 1; 0: no change); "
                 "repeatable")
  p.add_argument("--lora-mode", choices=("merged", "runtime"), default="merged", help="merged (default): the "
                 "adapters are merged into the weights once at load (no cost per step); runtime: merged inside "
                 "each compiled UNet stage from the base weights, the adapters and their scales, so another scale "
                 "or adapter of the same rank and targets compiles nothing (docs/sampling.md)")
  p.add_argument("--no-compile-cache", action="store_true", help="do not keep compiled programs between runs "
                 "(default: a per-user cache, ~/.cache/kvjax/jax or $KVJAX_COMPILE_CACHE)")


def add_generation_options(p: argparse.ArgumentParser) -> None:
  """The options of one video (OPTION_FIELDS maps each to its GenerationOptions field): this program's, and
  the fields of the app's page (sample/app.py), where those it does not name go under the "advanced" fold."""
  d = GenerationOptions()
  p.add_argument("--fps", choices=sorted(FPS_PASSES), help=f"low: 12 frames, medium: 45, high: 177 (default {d.fps})")
  p.add_argument("--windows", type=int, help=f"a longer video: this many windows of 12 base frames chained in "
                 f"latent space, each going on from the last frame of the one before (default 1; at most "
                 f"{MAX_WINDOWS}); see docs/sampling.md")
  p.add_argument("--seconds", type=float, help="a video at least this long (instead of --windows): the fewest "
                 f"windows that last it at the chosen --fps, {WINDOW_SECONDS:g} s a window (at most {MAX_WINDOWS} "
                 "windows)")
  p.add_argument("--window-overlap", type=int, metavar="K", help="base frames each next window shares with the "
                 "one before, held as they were (default 1: the seam frame alone; at most "
                 f"{MAX_WINDOW_OVERLAP}); see docs/sampling.md")
  p.add_argument("--prompt-per-window", action="store_true", help="the prompts are one video's, one per window "
                 "in order (the last holds for the windows after it)")
  p.add_argument("--motion", choices=list(MOTION_SCORES), help=f"default {d.motion} (the demo: its own)")
  p.add_argument("--width", type=int, help="video width (default 512; 64 for the demo and random weights; at most "
                 f"{MAX_SIDE}, and {MAX_FRAME_PIXELS} pixels a frame)")
  p.add_argument("--height", type=int, help="video height (default 512; 64 for the demo and random weights)")
  # Options without a default here take the weights folder's sampling.json, else GenerationOptions' defaults.
  p.add_argument("--key-frame-guidance", type=float, help=f"default {d.key_frame_guidance_scale}")
  p.add_argument("--text-guidance", type=float, help=f"default {d.guidance_weight_prompt}")
  p.add_argument("--image-guidance", type=float, help=f"default {d.guidance_weight_image} (the demo: its own)")
  p.add_argument("--interpolation-guidance", type=float, help=f"default {d.interpolation_guidance_scale}")
  p.add_argument("--noise-augmentation", type=int, help=f"default {d.noise_augmentation}")
  p.add_argument("--keep-image", action=argparse.BooleanOptionalAction, help="with --image: the video starts "
                 "with the picture itself; the reference (--no-keep-image) generates its first frame anew from it "
                 "(default: off; the demo: on)")
  p.add_argument("--steps", type=int, nargs=3, metavar=("KEY", "BASE", "INTERP"),
                 help=f"denoising steps per stage (default {d.key_frame_steps} {d.base_frame_steps} "
                 f"{d.interpolation_steps}; the demo's own; 4 4 2 with random weights)")
  p.add_argument("--sampler", choices=SAMPLERS,
                 help=f"{d.sampler} (default) is the reference; ddim and dpm_solver_pp are faster (not the "
                 "reference; the demo: its own)")
  p.add_argument("--cache-interval", type=int, nargs="+", metavar="N",
                 help="feature caching (not the reference): the UNets run whole every N-th denoising step and only "
                 "their shallowest levels in between; one N for every stage or three (KEY BASE INTERP); default 1 "
                 "(every step whole)")
  p.add_argument("--cache-schedule", choices=feature_cache.SCHEDULES, help=f"where the full steps fall: uniform (every N-th) or ends (as many, "
                 f"denser at both ends of each stage) (default {d.cache_schedule})")
  p.add_argument("--cache-full-ends", type=int, metavar="K", help="with caching, the first and last K steps of "
                 f"each stage always run whole (default {d.cache_full_ends}; the first step always does)")
  p.add_argument("--seed", type=int, help=f"in [0, 2**32) (default {d.seed})")


# Each generation option (argparse dest) and the GenerationOptions field it sets (--steps sets three).
OPTION_FIELDS = {"width": "width", "height": "height", "sampler": "sampler", "motion": "motion", "fps": "fps",
                 "key_frame_guidance": "key_frame_guidance_scale", "text_guidance": "guidance_weight_prompt",
                 "image_guidance": "guidance_weight_image", "interpolation_guidance": "interpolation_guidance_scale",
                 "noise_augmentation": "noise_augmentation", "seed": "seed", "keep_image": "keep_image",
                 "steps": ("key_frame_steps", "base_frame_steps", "interpolation_steps"), "windows": "windows",
                 "window_overlap": "window_overlap",
                 # one interval for every stage or three (_cache_intervals)
                 "cache_interval": ("key_frame_cache_interval", "base_frame_cache_interval", "interpolation_cache_interval"),
                 "cache_schedule": "cache_schedule", "cache_full_ends": "cache_full_ends"}


def _mesh(spec: str | None):
  if not spec:
    return None
  from kvjax.sharding import make_mesh
  try:
    return make_mesh(spec)
  except ValueError as e:
    raise ValueError(f"--mesh: {e}") from None


def _outputs(out: str, count: int) -> list[str]:
  if count == 1:
    return [out]
  stem, suffix = os.path.splitext(out.rstrip("/"))
  return [f"{stem}_{i}{suffix}" for i in range(count)]


def _images(paths, count):
  from kvjax.pipeline.images import open_image
  if paths is None:
    return None
  if len(paths) not in (1, count):
    raise ValueError(f"--image: give one image or one per prompt ({count}), got {len(paths)}")
  images = [open_image(path, "--image") for path in paths]  # any mode and bit depth; bounded size
  return images * count if len(images) == 1 else images


def _check_prompts(prompts) -> None:
  for i, prompt in enumerate(prompts):
    where = f"prompt {i + 1}" if len(prompts) > 1 else "the prompt"
    if not prompt.strip():
      raise ValueError(f"{where} is empty; describe the video, e.g. \"a red fox running through snow\"")
    try:
      prompt.encode("utf-8")
    except UnicodeEncodeError:
      raise ValueError(f"{where} is not valid text (bytes that are not UTF-8): {prompt!r}") from None


def _model_overrides(args) -> dict[str, str]:
  paths = {"image_movq": args.image_movq, "video_movq": args.video_movq}
  for field, path in paths.items():
    if path is not None and not os.path.isfile(os.path.join(path, "config.json")):
      raise FileNotFoundError(f"--{field.replace('_', '-')} {path}: not a converted model folder (no config.json)")
    if path is not None:
      print(f"{field.replace('_', ' ')}: {path}", file=sys.stderr)
  return {field: path for field, path in paths.items() if path is not None}


def _sampling_defaults(weights_dir: str) -> dict:
  """WEIGHTS/sampling.json (read_sampling_defaults), its values checked and said."""
  values = read_sampling_defaults(weights_dir)
  if not values:
    return {}
  path = os.path.join(weights_dir, SAMPLING_DEFAULTS)
  try:
    GenerationOptions(**values).check_size()  # bad values are the file's errors, not the flags'
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  print(f"defaults from {path}: {', '.join(f'{k} {v}' for k, v in values.items())}", file=sys.stderr)
  return values


def _warn_cut_prompts(prompts, tokenizer) -> None:
  """The reference cuts a long prompt to the tokenizer length without a word; we cut it too, and say so."""
  for i, prompt in enumerate(prompts):
    cut = tokenizer.cut_tokens(prompt)
    if cut:
      where = f"prompt {i + 1}" if len(prompts) > 1 else "the prompt"
      print(f"warning: {where} is longer than the {tokenizer.max_length} tokens the text encoder reads (EOS "
            f"included): its last {cut} token{'s' if cut > 1 else ''} are cut", file=sys.stderr)


def generation_options(args, defaults: dict) -> GenerationOptions:
  """The options given on the command line, over the weights folder's sampling.json (`defaults`), over
  GenerationOptions' own defaults. Every option is checked (sizes included) before weights are loaded or
  anything is compiled."""
  given = {}
  for dest, field in OPTION_FIELDS.items():
    value = getattr(args, dest)
    if value is not None:
      given.update(zip(field, value) if isinstance(field, tuple) else {field: value})
  given.update(_cache_intervals(args))
  options = GenerationOptions(**{**defaults, **given})
  seconds = getattr(args, "seconds", None)
  if seconds is None:
    return options
  if args.windows is not None:
    raise ValueError(f"--seconds {seconds:g} and --windows {args.windows}: give one of them")
  return options.with_seconds(seconds)


def _cache_intervals(args) -> dict:
  """--cache-interval's GenerationOptions fields: one interval for every stage, or three (KEY BASE INTERP)."""
  intervals = args.cache_interval
  if intervals is None:
    return {}
  if len(intervals) not in (1, 3):
    raise ValueError(f"--cache-interval takes one interval for every stage or three (KEY BASE INTERP), got "
                     f"{len(intervals)}")
  return dict(zip(OPTION_FIELDS["cache_interval"], intervals * 3 if len(intervals) == 1 else intervals))


def weights_and_defaults(weights: str | None) -> tuple[str, dict]:
  """The weights folder of --weights (None: the embedded demo, or "random" where it is not installed, and
  says so) and the generation options it recommends (its sampling.json; the tiny preset's for "random")."""
  from kvjax import demo
  weights_dir = weights
  if weights_dir is None:
    weights_dir = demo.DEMO_WEIGHTS if demo.installed() else "random"
    if weights_dir == "random":
      print(f"the embedded demo weights are not installed ({demo.DEMO_WEIGHTS}; `python -m train.demo OUT "
            "--install` makes them)", file=sys.stderr)
  if weights_dir == "random":
    return weights_dir, dict(RANDOM_WEIGHTS_OPTIONS)
  return weights_dir, _sampling_defaults(weights_dir)


def _quantize(args) -> dict[str, str]:
  """--quantize as {PipelineConfig field: "int8"} (kvjax.quantization.parse_quantize)."""
  from kvjax.quantization import parse_quantize
  return {} if args.quantize is None else parse_quantize(args.quantize)


def check_model_options(args, weights_dir: str):
  """The mesh of --mesh, --quantize and the model folders of --image-movq and --video-movq, checked before any
  weights load."""
  _quantize(args)
  mesh = _mesh(args.mesh)
  if weights_dir != "random" and not os.path.isdir(weights_dir):
    raise FileNotFoundError(f"--weights {weights_dir}: no such folder (make one with `python -m convert all`, or "
                            "leave --weights out for the embedded demo)")
  return mesh, _model_overrides(args)


MAX_LORA_SCALE = 100.0


def parse_lora(text: str) -> tuple[str, float]:
  """--lora FILE[:SCALE] -> (FILE, SCALE); a FILE whose name holds a colon is taken whole when it exists."""
  path, sep, scale = text.rpartition(":")
  if not sep or os.path.isfile(text):
    return text, 1.0
  try:
    value = float(scale)
  except ValueError:
    raise ValueError(f"--lora {text}: the scale {scale!r} is not a number (FILE:SCALE, e.g. style.safetensors:0.8)") \
        from None
  if not abs(value) <= MAX_LORA_SCALE:
    raise ValueError(f"--lora {text}: the scale must be a number in [-{MAX_LORA_SCALE:g}, {MAX_LORA_SCALE:g}]")
  return path, value


def read_loras(args) -> list:
  """The adapters of --lora, read and checked (format, keys, shapes) before any weights load: (Adapter, scale)."""
  from kvjax.conversion.adapters import read_adapter
  loras = []
  for text in getattr(args, "lora", None) or []:
    path, scale = parse_lora(text)
    adapter = read_adapter(path, "--lora")
    print(f"LoRA: {path} (rank {adapter.rank} on {','.join(adapter.targets)} of the {adapter.kind}, step "
          f"{adapter.step}{', trigger words ' + ' '.join(adapter.trigger_words) if adapter.trigger_words else ''}) "
          f"at scale {scale:g}", file=sys.stderr)
    loras.append((adapter, scale))
  from kvjax.conversion.adapters import adapter_words
  adapter_words([a for a, _ in loras])  # two adapters reading a word two ways: refused before any weights load
  return loras


def load_pipeline(args, weights_dir: str, defaults: dict, mesh, overrides: dict, seed: int = 0, loras=()):
  """The pipeline of the model options (add_model_options) over `weights_dir` ("random": the tiny preset's
  random weights drawn from `seed`), with the compile cache on unless --no-compile-cache. `loras` (read_loras):
  with --lora-mode merged, merged into the UNets in host memory before the pipeline places the weights (mesh or
  offload); with runtime, placed beside the weights (as loaded, quantized or not) and merged in each stage."""
  from kvjax import demo
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  import jax.numpy as jnp
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.pipeline.pipeline_weights import quantize_weights, random_weights, with_models
  quantize = _quantize(args)
  merge = bool(loras) and getattr(args, "lora_mode", "merged") == "merged"
  if weights_dir == demo.DEMO_WEIGHTS:
    print(f"weights: the embedded demo ({weights_dir}): a small model kvjax trained on moving shapes, "
          f"{defaults.get('width')}x{defaults.get('height')}; pass --weights for others", file=sys.stderr)
  if weights_dir == "random":
    print("--weights random: running the TINY preset with RANDOM weights and a stand-in tokenizer; the video "
          "will be noise (convert the official checkpoints with `python -m convert all` for real output)",
          file=sys.stderr)
    from kvjax.text.hashed_tokenizer import HashedWordTokenizer
    config = PIPELINE_PRESETS["tiny"]
    config, weights = with_models(config, random_weights(config, seed), overrides)
    tokenizer = HashedWordTokenizer(config.text_encoder.vocab_size, config.tokens_length)
  else:
    from kvjax.pipeline.pipeline_weights import load_pipeline_weights
    from kvjax.text.tokenizer import T5Tokenizer
    tokenizer_path = args.tokenizer or os.path.join(weights_dir, "spiece.model")
    if not os.path.isfile(tokenizer_path):
      raise FileNotFoundError(f"{tokenizer_path}: no tokenizer; pass --tokenizer PATH to FLAN-UL2's spiece.model")
    # With adapters to merge the weights are read into host memory, merged there, quantized, then placed by the
    # pipeline.
    config, weights = load_pipeline_weights(weights_dir, overrides=overrides, mesh=None if merge else mesh,
                                            offload=args.offload or merge, scan_text_encoder=True,
                                            quantize=None if merge else quantize)
    from kvjax.conversion.adapters import adapter_words
    # The adapters' trigger words read as the sentinels they were trained with (kvjax.text.tokenizer).
    tokenizer = T5Tokenizer(tokenizer_path, config.tokens_length, words=adapter_words([a for a, _ in loras]))
  from kvjax.pipeline.pipeline_weights import with_adapters
  if merge:
    weights = with_adapters(config, weights, loras)
  if merge or weights_dir == "random":  # quantized here, after any adapters are merged into the float kernels
    weights = quantize_weights(weights, quantize)
  if loras and not merge:
    weights = with_adapters(config, weights, loras, mode="runtime")
  if not args.no_compile_cache:
    from kvjax import compile_cache
    compile_cache.enable()
  pipeline = TextToVideo(config, weights, tokenizer, jnp.bfloat16 if args.bf16 else jnp.float32, mesh=mesh,
                         offload=args.offload, attention=args.attention)
  del weights  # the pipeline holds its own copy (placed, or in host memory with --offload): free the loaded one
  return pipeline


def run(args) -> int:
  from .writers import check_output_path, write_videos
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS

  videos = 1 if args.prompt_per_window else len(args.prompts)
  outputs = _outputs(args.out, videos)
  for out in outputs:  # fail before any work on a bad, taken or unwritable output path
    check_output_path(out, args.overwrite)
  _check_prompts(args.prompts)
  images = _images(args.image, videos)
  weights_dir, defaults = weights_and_defaults(args.weights)
  options = generation_options(args, defaults)
  options.check_size(PIPELINE_PRESETS["tiny"] if weights_dir == "random" else None)
  if args.prompt_per_window and len(args.prompts) > options.windows:
    raise ValueError(f"--prompt-per-window: {len(args.prompts)} prompts for {options.windows} "
                     f"window{'s' * (options.windows > 1)} (--windows): give one per window at most")
  prompts = [args.prompts] if args.prompt_per_window else args.prompts
  mesh, overrides = check_model_options(args, weights_dir)  # before any weights load
  loras = read_loras(args)
  pipeline = load_pipeline(args, weights_dir, defaults, mesh, overrides, seed=options.seed, loras=loras)
  options.check_size(pipeline.config)
  _warn_cut_prompts(args.prompts, pipeline.tokenizer)
  start = time.perf_counter()
  def bar(stage, done, total):
    filled = 30 * done // total
    print(f"\r  {stage:<18} [{'#' * filled}{'.' * (30 - filled)}] {done}/{total}", end="", file=sys.stderr,
          flush=True)

  report = lambda stage, seconds: print(f"\r  {stage:<18} {'done':<32} {seconds:7.1f} s", file=sys.stderr)
  steps = bar if args.progress or sys.stderr.isatty() else None
  videos = pipeline(prompts, options, images, progress=report, step_progress=steps)
  write_videos(videos, outputs, overwrite=args.overwrite, seconds=options.seconds)  # all of them or none
  for video, out in zip(videos, outputs):
    print(f"wrote {out}: {video.shape[0]} frames of {video.shape[2]}x{video.shape[1]}")
  print(f"done in {time.perf_counter() - start:.1f} s", file=sys.stderr)
  return 0


def main(argv=None) -> int:
  from kvjax.atomic import sigterm_unwinds
  args = _parser().parse_args(argv)
  try:
    with sigterm_unwinds():  # a `kill` while writing leaves no staging behind
      return run(args)
  except (FileNotFoundError, FileExistsError, ValueError) as e:  # OutputError (unwritable outputs) too
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
