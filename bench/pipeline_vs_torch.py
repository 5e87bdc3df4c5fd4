"""The whole text-to-video pipeline against the official PyTorch pipeline, stage by stage, on this machine.

  python bench/pipeline_vs_torch.py --reference PATH/TO/kandinsky_video [--steps 4] [--fps medium]
  python bench/pipeline_vs_torch.py --reference PATH --steps 4 4 2 --width 128 --height 64 --repeats 3

PATH is the official repository's `kandinsky_video` package folder (ai-forever/KandinskyVideo, branch main:
`t2v_pipeline.py`, `condition_encoders.py`, `condition_processors.py`, `movq.py`, `model/`); it is not
shipped with kvjax. torch, einops, diffusers and transformers must be installed; torchvision, omegaconf and
scikit-image, which the official package imports for a few helpers, are replaced by minimal stand-ins
(ToTensor, ToPILImage, Compose, Lambda as torchvision computes them) when they are not installed.

Both pipelines are built at the "tiny" preset's sizes with the same random weights: the official modules
(UNet, interpolation UNet, both MoVQs, projections; Hugging Face's T5EncoderModel with T5_ENCODER_TINY's
shape) are constructed with the tiny constructor kwargs, re-drawn at random, saved in the official file
layouts and converted by our converters. One deviation from "tiny": its MoVQs down-sample 4x, while the
official pipeline hard-codes 8x (base latents H // 8, key-frame latents H // 4 for its 2x key frame), so
both MoVQs here get a fourth level (ch_mult (1, 2, 2, 2), attention at the lowest level): 8x, as in
production. Both sides tokenize with one small SentencePiece model trained here (ours: kvjax's T5Tokenizer;
theirs: Hugging Face's T5Tokenizer through the official processor).

Stages are those of TextToVideo: text, key frame (sampling at 2x the video size + image MoVQ decode), encode
key frame (image MoVQ), base frames (12 frames, 3-way guidance), one interpolation pass per fps step, decode
(video MoVQ in the reference's chunks). The official side calls the official pipeline's own methods
(encode_text, generate_key_frame, encode_image, BaseDiffusion.p_sample_loop as generate_base_frames calls
it, interpolate_base_frames, decode_video) split at those boundaries; like the official pipeline, each of
its denoising stages re-encodes the prompt with T5 (a few milliseconds at this size), where ours encodes
once. Step counts: the official samplers hard-code 50 (key frame, base frames) and 10 (interpolation) steps;
here diffusion.get_sampler and the interpolation scheduler are set to --steps instead. tqdm's progress bars
in the official loops are turned off. Everything runs in float32 on the CPU (the official dtype map is set
to float32: its float16 UNets are for GPUs).

For each stage: ours on the first call (compile + run; JAX's persistent compilation cache is turned off),
ours steady (median of --repeats further runs), the same two for PyTorch (its first run pays one-time
allocations), and torch seconds / ours for both (above 1: kvjax is faster). Runs alternate between the two
sides so that load from other processes affects both alike. Both sides use the same --threads cores (the
process's CPU affinity, which bounds where XLA's threads run, and torch.set_num_threads). On a machine that other
jobs keep busy, torch with more than one thread can be many times slower (its OpenMP workers wait on each
other for cores they do not get): pass --threads 1 there.

Two consistency checks come after the table: the text context (same tokenizer, T5 and projection weights)
and our video MoVQ decode of the official pipeline's final latents against the official decode (uint8
levels). The final frames of the two pipelines are not compared: the same weights do not give the same
frames without the same noise, and the two draw theirs from different generators (torch.randn / rand_like
inside the official samplers and diffusers' scheduler steps, jax.random in ours), which TextToVideo has no
hook to replace; the noise-replayed parity of the samplers is what tests/fixtures/keyframe_sampling and
interpolation_sampling check.

Measured (2026-12-05, `--threads 1`, defaults: 64x64, medium fps, 4 steps a stage, ddpm; the 2-core machine
also training a model), seconds and torch / ours:

  stage              ours first  ours steady  torch first  torch steady  ratio steady  ratio first
  text                    1.031        0.003        0.009         0.003          0.92         0.01
  key frame              13.244        0.106        0.387         0.373          3.51         0.03
  encode key frame        1.001        0.010        0.014         0.018          1.85         0.01
  base frames            19.566        0.183        0.384         0.567          3.09         0.02
  interpolation 1        18.626        0.081        0.263         0.235          2.89         0.01
  decode                  8.531        5.663        5.796         5.850          1.03         0.68
  total                  61.998        6.047        6.853         7.046          1.17         0.11

The denoising stages run about 3x faster than PyTorch once compiled; the video MoVQ decode, which is most
of the steady time at this size, runs as fast as PyTorch's (its convolutions dominate: bench/unet_vs_torch.py
--profile says what remains on the UNet side); the first run is compiling (python -m sample's compile cache
keeps it for the next run). Both sides agree: text context within 1.1e-6, and our decode of the official
final latents within 1 uint8 level.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import io
import math
import os
import statistics
import sys
import tempfile
import time
import types
import warnings

import jax
import numpy as np

PROMPT_CORPUS = ("a red fox runs through the snowy forest at dawn", "waves crash on a rocky shore under grey sky",
                 "a small boat drifts down a quiet river", "city lights flicker at night in the rain",
                 "a cat sleeps on a warm windowsill in the sun", "birds fly over green hills and a blue lake")


def _median(values) -> float:
  return statistics.median(values) if values else float("nan")


def _install_stand_ins() -> list[str]:
  """Minimal torchvision / omegaconf / skimage modules for the official package's imports, where missing.
  transformers and diffusers probe for torchvision when imported: they are imported first, and see none."""
  import torch
  import transformers
  importlib.import_module("diffusers")
  transformers.T5EncoderModel, transformers.T5Tokenizer  # their lazy modules import now
  from PIL import Image
  installed = []

  def missing(name):
    try:
      importlib.import_module(name)
      return False
    except ImportError:
      return True

  if missing("torchvision"):
    transforms = types.ModuleType("torchvision.transforms")

    class Compose:
      def __init__(self, fns):
        self.fns = fns

      def __call__(self, x):
        for fn in self.fns:
          x = fn(x)
        return x

    class Lambda:
      def __init__(self, fn):
        self.fn = fn

      def __call__(self, x):
        return self.fn(x)

    class ToTensor:  # uint8 PIL image -> float CHW in [0, 1]
      def __call__(self, image):
        return torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)

    class ToPILImage:  # float CHW in [0, 1] -> PIL image, truncating as torchvision
      def __call__(self, tensor):
        return Image.fromarray(tensor.mul(255).byte().permute(1, 2, 0).cpu().numpy())

    transforms.Compose, transforms.Lambda, transforms.ToTensor, transforms.ToPILImage = (
        Compose, Lambda, ToTensor, ToPILImage)
    transforms.functional = types.ModuleType("torchvision.transforms.functional")
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": transforms.functional})
    installed.append("torchvision")
  if missing("omegaconf"):
    omegaconf = types.ModuleType("omegaconf")
    omegaconf.OmegaConf = None  # only the training config loader uses it
    sys.modules["omegaconf"] = omegaconf
    installed.append("omegaconf")
  if missing("skimage.transform"):
    skimage = types.ModuleType("skimage")
    skimage.transform = types.ModuleType("skimage.transform")
    skimage.transform.resize = None  # only the inpainting mask helper uses it
    sys.modules.update({"skimage": skimage, "skimage.transform": skimage.transform})
    installed.append("skimage")
  return installed


def bench_config():
  """The tiny preset with 8x MoVQs (the official pipeline's latent sizes assume 8x)."""
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  tiny = PIPELINE_PRESETS["tiny"]
  deeper = dict(ch_mult=(1, 2, 2, 2), attn_resolutions=(2,))
  return dataclasses.replace(tiny, image_movq=dataclasses.replace(tiny.image_movq, **deeper),
                             video_movq=dataclasses.replace(tiny.video_movq, **deeper))


def _randomize(module, seed: int) -> None:
  """Every parameter re-drawn (the reference zero-initialises many layers): weights N(0, 1/fan_in), vectors
  named weight (norm scales) 1 + N(0, 0.1^2), other vectors N(0, 0.1^2), scalars (blends) U(0.2, 0.8)."""
  import torch
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, param in module.named_parameters():
      if param.ndim >= 2:
        value = torch.randn(param.shape, generator=generator) / math.sqrt(param[0].numel())
      elif param.ndim == 1:
        value = torch.randn(param.shape, generator=generator) * 0.1 + (1.0 if name.endswith("weight") else 0.0)
      else:
        value = torch.rand(param.shape, generator=generator) * 0.6 + 0.2
      param.copy_(value)


def _train_sentencepiece(path: str) -> None:
  """A small unigram model with T5's special ids (pad 0, eos 1, unk 2, no bos)."""
  import sentencepiece
  sentencepiece.SentencePieceTrainer.train(
      sentence_iterator=iter(PROMPT_CORPUS * 20), model_prefix=path[:-len(".model")], vocab_size=64,
      model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False,
      character_coverage=1.0, minloglevel=2)


def build_both(reference: str, config, scratch: str, seed: int):
  """(official pipeline, its module, our PipelineWeights, our tokenizer), with the same random weights."""
  import torch
  import transformers
  from kvjax.conversion.movq import convert_movq
  from kvjax.conversion.t5 import convert_t5_encoder, convert_text_projections
  from kvjax.conversion.unet import convert_unet
  from kvjax.pipeline.pipeline_weights import PipelineWeights
  from kvjax.text.tokenizer import T5Tokenizer

  folder = os.path.abspath(reference)
  sys.path.insert(0, os.path.dirname(folder))
  package = os.path.basename(folder)
  with contextlib.redirect_stdout(io.StringIO()):  # the official MoVQ prints its z shape
    pipeline_module = importlib.import_module(f"{package}.t2v_pipeline")
    keyframe_unet = importlib.import_module(f"{package}.model.unet").UNet
    interpolation_unet = importlib.import_module(f"{package}.model.unet_interpolation").UNet
    movq_class = importlib.import_module(f"{package}.movq").MoVQ
    encoder_class = importlib.import_module(f"{package}.condition_encoders").T5TextConditionEncoder
    processor_class = importlib.import_module(f"{package}.condition_processors").T5TextConditionProcessor

    torch.manual_seed(seed)
    models = {"keyframe": keyframe_unet(**config.keyframe.to_dict()),
              "interpolation": interpolation_unet(**config.interpolation.to_dict()),
              "image_movq": movq_class(config.image_movq.to_dict()),
              "video_movq": movq_class(config.video_movq.to_dict())}
  for i, model in enumerate(models.values()):
    _randomize(model, seed + i)
    model.eval()
  nulls = {name: 0.5 * torch.randn(config.keyframe.context_dim) for name in ("keyframe", "interpolation")}

  paths = {}
  for name in ("keyframe", "interpolation"):
    paths[name] = os.path.join(scratch, f"{name}.pt")
    torch.save({"unet": models[name].state_dict(), "null_embedding": nulls[name]}, paths[name])
  for name in ("image_movq", "video_movq"):
    paths[name] = os.path.join(scratch, f"{name}.pt")
    torch.save(models[name].state_dict(), paths[name])

  # T5: a Hugging Face folder (config, weights, spiece.model) that both T5 loaders read.
  t5 = config.text_encoder
  t5_folder = os.path.join(scratch, "t5")
  hf_config = transformers.T5Config(
      vocab_size=t5.vocab_size, d_model=t5.d_model, d_kv=t5.d_kv, d_ff=t5.d_ff, num_layers=t5.num_layers,
      num_heads=t5.num_heads, relative_attention_num_buckets=t5.relative_attention_num_buckets,
      relative_attention_max_distance=t5.relative_attention_max_distance, layer_norm_epsilon=t5.layer_norm_epsilon,
      feed_forward_proj=t5.feed_forward_proj)
  transformers.T5EncoderModel(hf_config).save_pretrained(t5_folder)
  spiece = os.path.join(t5_folder, "spiece.model")
  _train_sentencepiece(spiece)
  projections = {}
  for i, head in enumerate(("projection_base", "projection_interpolation")):
    layers = torch.nn.Sequential(torch.nn.Linear(t5.d_model, config.projections.context_dim, bias=False),
                                 torch.nn.LayerNorm(config.projections.context_dim))
    _randomize(layers, seed + 10 + i)
    projections[head] = layers.state_dict()
  paths["projections"] = os.path.join(scratch, "t5_projections.pt")
  torch.save(projections, paths["projections"])

  transformers.logging.set_verbosity_error()
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter("ignore")
    encoder = encoder_class(t5_folder, paths["projections"], config.projections.context_dim,
                            low_cpu_mem_usage=False, device=None, dtype=torch.float32).eval()
    processor = processor_class(config.tokens_length, t5_folder)
  cpu = {k: "cpu" for k in ("unet", "interpolation_unet", "text_encoder", "movq")}
  float32 = {k: torch.float32 for k in cpu}
  official = pipeline_module.KandinskyVideoT2VPipeline(
      cpu, float32, models["keyframe"], nulls["keyframe"], models["interpolation"], nulls["interpolation"],
      processor, encoder, models["image_movq"], models["video_movq"])

  keyframe = convert_unet(paths["keyframe"], config.keyframe)
  interpolation = convert_unet(paths["interpolation"], config.interpolation)
  weights = PipelineWeights(
      keyframe=keyframe.params, keyframe_null=keyframe.extras["null_embedding"], interpolation=interpolation.params,
      interpolation_null=interpolation.extras["null_embedding"],
      image_movq=convert_movq(paths["image_movq"], config.image_movq).params,
      video_movq=convert_movq(paths["video_movq"], config.video_movq).params,
      text_encoder=convert_t5_encoder(t5_folder, config.text_encoder).params,
      projections=convert_text_projections(paths["projections"], config.projections).params)
  return official, pipeline_module, weights, T5Tokenizer(spiece, config.tokens_length)


class ReferenceRun:
  """One generation with the official pipeline's methods, split at TextToVideo's stage boundaries."""

  def __init__(self, official, pipeline_module, steps: tuple[int, int, int]):
    self.official, self.module, self.steps = official, pipeline_module, steps
    diffusion = sys.modules[type(official.base_diffusion).__module__]
    original = diffusion.get_sampler
    self._key_steps = steps[0]
    # The key-frame and base-frame loops call get_sampler() (50 steps): give them ours.
    diffusion.get_sampler = lambda **kw: original(**{"num_inference_timesteps": self._key_steps, **kw})
    diffusion.tqdm = lambda iterable, *a, **kw: iterable
    official.base_diffusion.interpolation_sampler.set_timesteps(steps[2])

  def __call__(self, prompt: str, options, seed: int, record) -> tuple[np.ndarray, object]:
    import torch
    p, module = self.official, self.module
    label = p.t5_encoder.IMAGE_GENERATION_LABEL
    h, w = options.height, options.width

    def stage(name, fn, *args):
      start = time.perf_counter()
      with torch.no_grad():
        out = fn(*args)
      record(name, time.perf_counter() - start)
      return out

    def base_frames(key_latent):  # generate_base_frames after its key frame and encode_image
      context, mask = p.encode_text(prompt, label, p.num_frames)
      return p.base_diffusion.p_sample_loop(
          p.unet, (p.num_frames, 4, h // 8, w // 8), p.device_map["unet"], context, mask, p.null_embedding,
          options.guidance_weight_prompt, key_frame=key_latent, num_frames=p.num_frames,
          guidance_weight_image=options.guidance_weight_image, motion_score=module.MOTION_SCORES[options.motion],
          noise_augmentation=options.noise_augmentation)

    torch.manual_seed(seed)
    stage("text", p.encode_text, prompt, label, 1)
    self._key_steps = self.steps[0]
    key_image = stage("key frame", p.generate_key_frame, prompt, h, w, options.key_frame_guidance_scale)
    key_latent = stage("encode key frame", p.encode_image, key_image, w, h)
    self._key_steps = self.steps[1]
    frames = stage("base frames", base_frames, key_latent)
    skips = {"low": (), "medium": (module.SKIP_FRAMES_MEDIUM_FPS,),
             "high": (module.SKIP_FRAMES_MEDIUM_FPS, module.SKIP_FRAMES_HIGH_FPS)}[options.fps]
    for i, skip in enumerate(skips):
      frames = stage(f"interpolation {i + 1}", p.interpolate_base_frames, frames, h, w,
                     options.interpolation_guidance_scale, skip, prompt)
    video = stage("decode", p.decode_video, frames)
    return np.stack([np.asarray(frame) for frame in video]), frames


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--reference", required=True, help="the official kandinsky_video package folder (parent of model/)")
  p.add_argument("--width", type=int, default=64, help="video width (a multiple of 64 here)")
  p.add_argument("--height", type=int, default=64)
  p.add_argument("--fps", default="medium", choices=("low", "medium", "high"))
  p.add_argument("--steps", type=int, nargs="+", default=[4], metavar="N",
                 help="denoising steps: one count for every stage, or KEY BASE INTERP (default 4)")
  p.add_argument("--repeats", type=int, default=2, help="steady-state runs after the first (default 2)")
  p.add_argument("--prompt", default="a red fox runs through the snowy forest")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--threads", type=int, help="CPU cores for both sides (default: all this process may use)")
  args = p.parse_args(argv)
  if len(args.steps) not in (1, 3):
    p.error("--steps takes one count or three (KEY BASE INTERP)")
  steps = tuple(args.steps * 3 if len(args.steps) == 1 else args.steps)
  if args.repeats < 1:
    p.error("--repeats must be at least 1 (the steady runs)")

  jax.config.update("jax_enable_compilation_cache", False)  # "first call" includes the compile
  import torch
  from kvjax.pipeline.pipeline_config import GenerationOptions
  from kvjax.pipeline.text_to_video import TextToVideo

  # Both sides on the same cores: the process's CPU affinity (set before the XLA backend starts, on the first
  # computation below) bounds both; torch also gets as many intra-op threads.
  cores = sorted(os.sched_getaffinity(0))[:args.threads or None]
  os.sched_setaffinity(0, cores)
  torch.set_num_threads(len(cores))
  stand_ins = _install_stand_ins()
  config = bench_config()
  options = GenerationOptions(width=args.width, height=args.height, fps=args.fps, motion="medium",
                              key_frame_steps=steps[0], base_frame_steps=steps[1], interpolation_steps=steps[2],
                              seed=args.seed)
  options.check_size(config)

  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as scratch:
    official, module, weights, tokenizer = build_both(args.reference, config, scratch, args.seed)
    ours = TextToVideo(config, weights, tokenizer)
    reference = ReferenceRun(official, module, steps)
  build_seconds = time.perf_counter() - start

  times = {"ours": {}, "torch": {}}
  frames = {}
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the official code's CUDA autocast, off on a CPU, warns at every call
    for run in range(1 + args.repeats):
      for side in ("ours", "torch"):
        record = lambda stage, seconds, side=side: times[side].setdefault(stage, []).append(seconds)
        if side == "ours":
          frames["ours"] = ours([args.prompt], options, progress=record)[0]
        else:
          frames["torch"], latents = reference(args.prompt, options, args.seed, record)
    # Consistency: the same weights give the same text context and the same decode of the same latents.
    ours_text = np.asarray(ours.encode_text([args.prompt])[0][0])
    with torch.no_grad():
      theirs_text = official.encode_text(args.prompt, official.t5_encoder.IMAGE_GENERATION_LABEL, 1)[0].numpy()
    ours_decode = ours.decode_video(jax.numpy.asarray(latents.permute(0, 2, 3, 1).numpy()[None]))[0]

  rows = []
  for stage in times["ours"]:
    o, t = times["ours"][stage], times["torch"][stage]
    rows.append((stage, o[0], _median(o[1:]), t[0], _median(t[1:])))
  totals = tuple(sum(r[i] for r in rows) for i in range(1, 5))

  print(f"# text-to-video pipeline, kvjax (jit) vs official PyTorch: tiny preset with 8x MoVQs, random weights "
        f"(same on both sides), 1 prompt, {args.fps} fps -> {frames['ours'].shape[0]} frames of "
        f"{args.width}x{args.height}, key frame {2 * args.width}x{2 * args.height}; steps {steps} (key, base, "
        f"interp), ddpm; fp32; {len(cores)} CPU threads each; median of {args.repeats} steady runs"
        + (f"; stand-ins for {', '.join(stand_ins)}" if stand_ins else "") + f"; build + convert {build_seconds:.1f} s")
  print(f"{'stage':<18} {'ours first':>10} {'ours steady':>11} {'torch first':>11} {'torch steady':>12} "
        f"{'ratio steady':>12} {'ratio first':>11}")
  for stage, of, os_, tf, ts in rows + [("total", *totals)]:
    print(f"{stage:<18} {of:>10.3f} {os_:>11.3f} {tf:>11.3f} {ts:>12.3f} {ts / os_:>12.2f} {tf / of:>11.2f}")

  text_diff = float(np.abs(ours_text[:, :theirs_text.shape[1]] - theirs_text).max())
  decode_diff = int(np.abs(ours_decode.astype(np.int16) - frames["torch"].astype(np.int16)).max())
  print(f"# text context max abs difference {text_diff:.2e}; video MoVQ decode of the official final latents: "
        f"max abs difference {decode_diff} uint8 levels over {frames['torch'].shape} frames. Final frames not "
        f"compared: the two draw their noise from different generators (see the docstring).")
  return 0


if __name__ == "__main__":
  sys.exit(main())
