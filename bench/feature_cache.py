"""Feature caching (kvjax.diffusion.feature_cache) side by side in one run: UNet FLOPs per video at production
shape, and on the embedded demo the FLOPs, the time and what the demo's judges and PSNR/SSIM say.

  python bench/feature_cache.py                                   # intervals 1, 2, 3, 5 and ends:3, 3 seeds
  python bench/feature_cache.py --configs 1 3 ends:3 --seeds 1    # a quicker look
  python bench/feature_cache.py --skip-demo                       # the production FLOPs only (no weights)

A config is N (uniform interval N in every stage), SCHEDULE:N (uniform or ends) or SCHEDULE:N:K (the first
and last K steps of each stage full too); the interpolation stage's interval is capped at its step count.
Config 1 (no caching, the reference) runs first: the others are compared with it (`--no-reference` runs
only the configs given, without PSNR and SSIM: a second process of the same table on a busy machine).

Production table (the kandinsky-video-1.1 preset, 512x512, fps medium, one prompt, bfloat16, the reference's
50/50/10 steps; abstract weights, nothing runs): UNet FLOPs of each denoising stage (the UNet calls of its
loop, every guidance branch, counted from the jaxpr by kvjax.flops.dense_flops with each cached step at its
cached branch), their sum, the sum over config 1's, and the H100 lower bound (sum / 989e12, dense bf16
peak). Per stage, `cached/full` is one cached step's FLOPs over one full step's.

Demo table (the embedded demo's weights and sampling.json options; the 20 prompts of every colour x
direction, one batch per seed; seed by seed over the configs, each config's row printed again after each of its
batches, over the seeds run so far, so that a run cut short still compares the configs it reached):
  videos         text-to-video videos judged so far
  UNet GF/video  UNet GFLOP per 12-frame video (key frame + base frames, counted as above)
  s/batch        wall seconds of one 20-video batch (fps low) once compiled, mean over the seeds after the
                 first (this CPU; compare within one run only)
  direction      text-to-video direction pass rate over seeds x 20 videos (kvjax.demo.judge.judge_motion)
  travel         their mean travel along the named direction, fraction of the frame
  i2v dir, IoU   image-to-video (seed 0, 20 rendered pictures): direction pass rate, first frame IoU > 0.5
  even           45-frame videos (fps medium, seed 0, 20 videos: interpolation cached too) stepping evenly
                 (largest step under 4x the median, judge.step_evenness)
  PSNR, SSIM     of each text-to-video video against config 1's at the same seed and prompt (mean dB, mean
                 SSIM; kvjax.demo.judge.psnr/ssim); PSNR 45f the same for the 45-frame videos
The judges' own noise: about +-0.06 on 60 videos (a pass rate's standard error is at most 0.065 there).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # sample_memory's helpers
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from kvjax.flops import dense_flops  # noqa: E402
from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS, GenerationOptions  # noqa: E402
from kvjax.pipeline.programs import StagePrograms  # noqa: E402
from kvjax.pipeline.stages import BASE_FRAMES, INTERPOLATION, KEY_FRAME  # noqa: E402
from kvjax.pipeline.text_to_video import weight_shardings  # noqa: E402
from kvjax.sharding import make_mesh  # noqa: E402
from sample_memory import H100_DENSE_BF16, abstract_weights, stage_calls  # noqa: E402

DENOISING = (KEY_FRAME, BASE_FRAMES, INTERPOLATION)


def parse_config(text: str) -> dict:
  """'3', 'ends:3' or 'uniform:3:1' -> GenerationOptions cache fields (interpolation's set per step count)."""
  parts = text.split(":")
  schedule, interval, ends = (["uniform"] * (len(parts) == 1) + parts + ["0"])[:3]
  return dict(cache_schedule=schedule, interval=int(interval), cache_full_ends=int(ends))


def cache_options(options: GenerationOptions, config: dict) -> GenerationOptions:
  n = config["interval"]
  return dataclasses.replace(options, cache_schedule=config["cache_schedule"],
                             cache_full_ends=config["cache_full_ends"], key_frame_cache_interval=n,
                             base_frame_cache_interval=n,
                             interpolation_cache_interval=min(n, options.interpolation_steps))


# --- FLOPs --------------------------------------------------------------------------------------------------

def step_flops(config, options: GenerationOptions, dtype, scopes=(None,)) -> list[dict]:
  """Per denoising stage call: (stage, one full step's UNet FLOPs, one cached step's) from two traces: the
  stage at one step, and the stage cached (interval 2) counted as if every step were full, then cached.
  `scopes` (kvjax.flops.dense_flops' name-stack patterns, None: every operation): one such dict each."""
  programs = StagePrograms(config, dtype)
  weights = abstract_weights(config, dtype, weight_shardings(config, make_mesh("", jax.devices()[:1])))
  uncached = cache_options(options, dict(cache_schedule="uniform", interval=1, cache_full_ends=0))
  cached = cache_options(options, dict(cache_schedule="uniform", interval=2, cache_full_ends=0))
  trace = lambda opts, steps=None: {name: jax.make_jaxpr(fn)(*(getattr(weights, f) for f in fields), *args)
                                    for name, fields, fn, args in stage_calls(programs, weights, opts, 1, steps)
                                    if name.split(" ")[0] in ("key", "base", "interpolation")}
  one, many = trace(uncached, 1), trace(cached)
  results = []
  for scope in scopes:
    result = {}
    for name, jaxpr in many.items():
      stage = next(s for s in DENOISING if name.startswith(s.name))
      steps = getattr(options, stage.steps)
      one_step = dense_flops(one[name], scope=scope)  # everything else + one full step
      all_full = dense_flops(jaxpr, (True,) * steps, scope)
      all_cached = dense_flops(jaxpr, (False,) * steps, scope)
      full = (all_full - one_step) / (steps - 1)
      rest = one_step - full
      result[name] = (stage, full, (all_cached - rest) / steps)
    results.append(result)
  return results


def unet_flops(per_stage: dict, options: GenerationOptions) -> dict:
  """UNet FLOPs of each denoising stage under the cache schedule of `options`."""
  out = {}
  for name, (stage, full, cached) in per_stage.items():
    steps = getattr(options, stage.steps)
    schedule = options.full_steps(stage.cache_interval, steps) or (True,) * steps
    out[name] = sum(schedule) * full + (steps - sum(schedule)) * cached
  return out


# The UNets' cross-attention (AttentionBlock's attention over the text; not its feed-forward, which reads the
# image features): what T-GATE reuses after its gate step.
CROSS_ATTENTION = r"resnet_attn_blocks_\d+_1/(\S*/)?attention/"


def production_table(configs, tgate: bool = False) -> None:
  config = PIPELINE_PRESETS["kandinsky-video-1.1"]
  options = GenerationOptions(width=512, height=512, fps="medium")
  start = time.perf_counter()
  per_stage, *cross = step_flops(config, options, jnp.bfloat16, (None, CROSS_ATTENTION) if tgate else (None,))
  names = list(per_stage)
  print(f"## production: kandinsky-video-1.1, 512x512, fps medium, 1 prompt, bf16, steps 50/50/10 "
        f"(traced in {time.perf_counter() - start:.0f} s)")
  print("cached/full per step: " + ", ".join(f"{n} {c / f:.3f}" for n, (_, f, c) in per_stage.items()))
  if tgate:  # T-GATE's most: the cross-attention's share of each step (a cached step runs level 0, which has none)
    print("cross-attention share of a full step: " + ", ".join(
        f"{n} {cross[0][n][1] / f:.3f}" for n, (_, f, _) in per_stage.items()) + "; of a cached step: " +
        ", ".join(f"{n} {cross[0][n][2] / c:.3f}" for n, (_, _, c) in per_stage.items()))
  print(f"{'config':<14}" + "".join(f"{n + ' TF':>20}" for n in names) + f"{'UNet TF':>10}{'vs 1':>7}{'H100 s':>8}")
  base = None
  for text in configs:
    flops = unet_flops(per_stage, cache_options(options, parse_config(text)))
    total = sum(flops.values())
    base = base or total
    print(f"{text:<14}" + "".join(f"{flops[n] / 1e12:>20.1f}" for n in names)
          + f"{total / 1e12:>10.1f}{total / base:>7.2f}{total / H100_DENSE_BF16:>8.2f}")


# --- the demo -----------------------------------------------------------------------------------------------

def demo_inputs(options: GenerationOptions):
  """The demo's judged inputs: (colour, shape, direction) cases, their prompts (every colour x direction), and one
  rendered first frame each for image-to-video (a fixed draw)."""
  from PIL import Image
  from kvjax.data import shapes
  from kvjax.demo import judge
  cases = judge.prompt_grid()
  rng = np.random.default_rng(5)
  pictures = [Image.fromarray(shapes.render_clip(
      shapes.sample_spec(rng, 45, colour=c, shape=s, direction=d, speed_class="fast"), 1, options.height,
      options.width)[0]) for c, s, d in cases]
  return cases, [judge.prompt(*case) for case in cases], pictures


def demo_table(configs, seeds: int, i2v: bool = True, frames45: bool = True) -> None:
  from kvjax import demo
  from kvjax.demo import judge
  from kvjax.pipeline.pipeline_weights import load_pipeline_weights
  from kvjax.pipeline.text_to_video import TextToVideo
  from kvjax.text.tokenizer import T5Tokenizer

  config, weights = load_pipeline_weights(demo.DEMO_WEIGHTS, tokens_length=16)
  pipeline = TextToVideo(config, weights, T5Tokenizer(os.path.join(demo.DEMO_WEIGHTS, "spiece.model"), 16))
  base = GenerationOptions(**demo.DEMO_OPTIONS)
  per_stage, = step_flops(config, base, jnp.float32)
  cases, prompts, pictures = demo_inputs(base)

  rows = {}
  for text in configs:
    options = cache_options(base, parse_config(text))
    flops = unet_flops(per_stage, options)
    rows[text] = dict(options=options, gf=(flops["key frame"] + flops["base frames"]) / 1e9, videos=[],
                      seconds=[], i2v_dir=float("nan"), iou=float("nan"), even=float("nan"), medium=None)
  print(f"\n## the embedded demo: {len(prompts)} prompts x {seeds} seeds, {base.sampler} "
        f"{base.key_frame_steps}/{base.base_frame_steps}/{base.interpolation_steps} steps, motion {base.motion}",
        flush=True)
  header = (f"{'config':<14}{'videos':>7}{'UNet GF/video':>14}{'s/batch':>9}{'direction':>10}{'travel':>8}"
            f"{'i2v dir':>8}{'IoU':>6}{'even':>6}{'PSNR':>7}{'SSIM':>7}{'PSNR 45f':>9}")
  reference = rows.get("1")

  def line(text, row):  # the config's row over the seeds it has run so far
    videos = np.concatenate(row["videos"])
    verdicts = [judge.judge_motion(v, c, d) for v, (c, _, d) in zip(videos, cases * len(row["videos"]))]
    nan = lambda measure, a, b: (float("nan") if a is None or b is None
                                 else np.mean([measure(v, r) for v, r in zip(a, b)]))
    ref = np.concatenate(reference["videos"][:len(row["videos"])]) if reference else None
    psnr, ssim = nan(judge.psnr, videos, ref), nan(judge.ssim, videos, ref)
    psnr45 = nan(judge.psnr, row["medium"], reference and reference["medium"])
    seconds = row["seconds"]
    run = np.mean(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return (f"{text:<14}{len(videos):>7}{row['gf']:>14.2f}{run:>9.1f}{np.mean([v.passed for v in verdicts]):>10.2f}"
            f"{np.nanmean([v.along for v in verdicts]):>8.3f}{row['i2v_dir']:>8.2f}{row['iou']:>6.2f}"
            f"{row['even']:>6.2f}{psnr:>7.1f}{ssim:>7.3f}{psnr45:>9.1f}")

  # Seed by seed over every config, each config's row printed as its batch ends: a run cut short still compares
  # every config it reached, over the seeds it reached.
  print(header, flush=True)
  for seed in range(seeds):
    for text, row in rows.items():
      start, cpu = time.perf_counter(), time.process_time()
      row["videos"].append(pipeline(prompts, dataclasses.replace(row["options"], seed=seed)))
      row["seconds"].append(time.perf_counter() - start)
      print(f"  [{text}] seed {seed}: {row['seconds'][-1]:.0f} s wall, {time.process_time() - cpu:.0f} s CPU",
            file=sys.stderr, flush=True)
      print(line(text, row), flush=True)
  if not (i2v or frames45):
    return
  for row in rows.values():
    if i2v:
      made = pipeline(prompts, row["options"], pictures)
      row["i2v_dir"] = np.mean([judge.judge_motion(v, c, d).passed for v, (c, _, d) in zip(made, cases)])
      row["iou"] = np.mean(np.array([judge.first_frame_match(v[0], np.asarray(p), c)
                                     for v, p, (c, _, _) in zip(made, pictures, cases)]) > 0.5)
    if frames45:
      row["medium"] = pipeline(prompts, dataclasses.replace(row["options"], fps="medium"))
      row["even"] = np.mean(np.array([judge.step_evenness(v, c) for v, (c, _, _) in zip(row["medium"], cases)]) < 4)
  print(f"\nwith image-to-video (seed 0) and 45-frame videos (seed 0):\n{header}")
  for text, row in rows.items():
    print(line(text, row), flush=True)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--configs", nargs="+", default=["1", "2", "3", "5", "ends:3"])
  p.add_argument("--seeds", type=int, default=3, help="text-to-video batches of 20 prompts (default 3: 60 videos)")
  p.add_argument("--skip-demo", action="store_true")
  p.add_argument("--skip-i2v", action="store_true", help="no image-to-video batch (i2v dir, IoU print nan)")
  p.add_argument("--skip-45f", action="store_true", help="no 45-frame batch (even, PSNR 45f print nan)")
  p.add_argument("--skip-production", action="store_true")
  p.add_argument("--tgate", action="store_true", help="also the cross-attention's share of a full and a cached "
                 "step at production shape: the most T-GATE (reusing its output after a gate step) could save")
  p.add_argument("--no-reference", action="store_true", help="run only the configs given, without config 1 "
                 "first (PSNR and SSIM then not measured)")
  args = p.parse_args(argv)
  configs = args.configs if args.no_reference else ["1"] + [c for c in args.configs if c != "1"]
  for c in configs:
    parse_config(c)
  print(f"# jax {jax.__version__}, {jax.default_backend()} backend, {os.cpu_count()} CPUs")
  if not args.skip_production:
    production_table(configs, args.tgate)
  if not args.skip_demo:
    demo_table(configs, args.seeds, not args.skip_i2v, not args.skip_45f)
  return 0


if __name__ == "__main__":
  sys.exit(main())
