"""Rebuilds the embedded demo from nothing: a synthetic world of moving shapes, its dataset, and every model of
a small Kandinsky Video trained on it by kvjax, each stage one of the README's commands:

  python -m train.demo OUT [--videos 600] [--parallel 2] [--keep DIR] [--install]

Stages (OUT/<stage>.done marks a finished one with its recipe; re-running the command resumes unfinished
stages from their checkpoints and skips finished ones, and refuses an OUT whose finished stages another
recipe made; stages whose inputs are ready run --parallel at once):
  videos       python -m train.make_shapes OUT/videos ...         mp4 files and captions
  prepared     python -m train.prepare_data OUT/videos OUT/prepared ...
  init         python -m train.init_weights OUT/weights ...       random weights, tokenizer of the captions
  image_movq   python -m train --config demo-image-movq ...        then train.export into OUT/weights/movq
  latents      python -m train.calibrate_latents OUT/weights ...  its latents' map to unit variance
  video_movq   python -m train --config demo-video-movq ...        the temporal decoder, from the image MoVQ
  video_movq_decoder  python -m train --config demo-video-movq-decoder ...  its whole decoder (encoder frozen)
  video_movq_decoder_more  python -m train --config demo-video-movq-decoder-more ...  more of it, a lower rate
  video_movq_decoder_long  python -m train --config demo-video-movq-decoder-long ...  longer still
  keyframe_image  python -m train --config demo-keyframe-image ... the keyframe UNet in image mode
  keyframe     python -m train --config demo-keyframe --init ...   the same UNet in video mode (the paper's recipe)
  keyframe_motion  python -m train --config demo-keyframe-motion --init ...  more of it, half at high noise
  keyframe_first   python -m train --config demo-keyframe-first --init ...   image mode on clips' first frames
  keyframe_temporal  python -m train --config demo-keyframe-temporal --init ...  video mode, temporal layers only
  keyframe_temporal_more  python -m train --config demo-keyframe-temporal-more --init ...  more of it, a lower rate
  keyframe_place  python -m train --config demo-keyframe-place --init ...  first frames in image mode, longer
  keyframe_settle  python -m train --config demo-keyframe-temporal --init ...  the temporal layers again
  interpolation_inputs  python -m train.precompute --config demo-interpolation ...  its windows' latents and text
  interpolation  python -m train --config demo-interpolation --data OUT/inputs/interpolation ...
  assemble     the exports (OUT/exports) join OUT/weights
  check        python -m sample ... --weights OUT/weights           one video, to look at

With --keep DIR each finished model stage's float16 output is also copied to DIR/<stage> (with the commands
that made it), and any run with the same --keep takes those instead of training them again: a recipe longer
than one sitting continues on a new machine from a DIR kept in the repository (train/demo_stages).

OUT/weights is then a complete weights folder (`python -m sample --weights OUT/weights`); --install copies
it into the package (kvjax/demo/weights), the default of `python -m sample`. Commands are printed as they
run; their output goes to OUT/logs/<stage>.log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from kvjax.cli import program_module
from kvjax.demo import DEMO_OPTIONS, DEMO_WEIGHTS, SAMPLING_DEFAULTS

# Videos of 2 s at 24 fps, 256 px, prepared at 128 px (the default size filter keeps them): a 12-frame window 4 frames apart (45 source frames) fits in every clip.
VIDEO_SECONDS, VIDEO_SIZE, FRAME_SIZE = 2.0, 256, 128
RECIPE = "recipe.json"  # in a --keep folder: the commands that made the output beside it
# The exports that ship: (stage, its folder in the weights), the models `assemble` gathers.
SHIPPED = (("video_movq_decoder_long", "video_movq"), ("keyframe_settle", "keyframe"),
           ("interpolation", "interpolation"))


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  commands: tuple[tuple[str, ...], ...]  # argvs of `python -m ...`
  after: tuple[str, ...] = ()  # stages that must finish first
  output: str | None = None  # a model stage's exported folder (what --keep keeps)


def stages(out: str, videos: int, seed: int, max_steps: int | None = None) -> list[Stage]:
  """The recipe, in an order that respects `after`. UNet stages read the frozen encoders from OUT/weights
  (random text encoder, the trained image MoVQ) and export to OUT/exports; `assemble` gathers them."""
  v, p, w, x = (os.path.join(out, name) for name in ("videos", "prepared", "weights", "exports"))
  run = lambda name: os.path.join(out, "runs", name)

  def train(name, preset, weights, export_to, after, *extra, data=p) -> Stage:
    cap = () if max_steps is None else ("--steps", str(max_steps))
    # Exports in float16, the shipped form: every later stage starts from what a --keep folder holds.
    return Stage(name, (("train", "--config", preset, "--data", data, "--weights", weights, "--workdir", run(name),
                         *cap, *extra), ("train.export", run(name), export_to, "--overwrite", "--dtype", "float16")),
                 after, export_to)

  captions = os.path.join(v, "captions.jsonl")
  interpolation_inputs = os.path.join(out, "inputs", "interpolation")
  return [
      Stage("videos", (("train.make_shapes", v, "--videos", str(videos), "--seconds", str(VIDEO_SECONDS),
                        "--size", str(VIDEO_SIZE), "--seed", str(seed), "--overwrite"),)),
      Stage("prepared", (("train.prepare_data", v, p, "--captions", captions, "--short-side", str(FRAME_SIZE),
                          "--workers", "2", "--seed", str(seed), "--no-progress"),), ("videos",)),
      Stage("init", (("train.init_weights", w, "--pipeline", "demo", "--captions", captions, "--seed", str(seed),
                      "--overwrite"),), ("videos",)),
      train("image_movq", "demo-image-movq", os.path.join(w, "movq"), os.path.join(w, "movq"), ("prepared", "init")),
      # Its latents at zero mean and unit variance (OUT/weights/latents.json): the UNets learn those.
      Stage("latents", (("train.calibrate_latents", w, "--config", "demo-keyframe-image", "--data", p,
                         "--std", "1", "--overwrite"),), ("image_movq",)),
      # The keyframe UNet's two stages are the longest chain: they start first, beside the interpolation UNet.
      train("keyframe_image", "demo-keyframe-image", w, os.path.join(x, "keyframe_image"), ("latents",)),
      train("keyframe", "demo-keyframe", w, os.path.join(x, "keyframe"), ("keyframe_image",),
            "--init", os.path.join(x, "keyframe_image")),
      train("keyframe_motion", "demo-keyframe-motion", w, os.path.join(x, "keyframe_motion"), ("keyframe",),
            "--init", os.path.join(x, "keyframe")),
      # Key frames where a prompt's video starts, then the temporal layers alone, so that they stay so.
      train("keyframe_first", "demo-keyframe-first", w, os.path.join(x, "keyframe_first"), ("keyframe_motion",),
            "--init", os.path.join(x, "keyframe_motion")),
      train("keyframe_temporal", "demo-keyframe-temporal", w, os.path.join(x, "keyframe_temporal"),
            ("keyframe_first",), "--init", os.path.join(x, "keyframe_first")),
      train("keyframe_temporal_more", "demo-keyframe-temporal-more", w, os.path.join(x, "keyframe_temporal_more"),
            ("keyframe_temporal",), "--init", os.path.join(x, "keyframe_temporal")),
      # Image mode on first frames again, longer (key frames on the start side 0.83 -> 1.00), then the
      # temporal layers once more, so that the base frames follow those key frames again.
      train("keyframe_place", "demo-keyframe-place", w, os.path.join(x, "keyframe_place"),
            ("keyframe_temporal_more",), "--init", os.path.join(x, "keyframe_temporal_more")),
      train("keyframe_settle", "demo-keyframe-temporal", w, os.path.join(x, "keyframe_settle"),
            ("keyframe_place",), "--init", os.path.join(x, "keyframe_place")),
      # The interpolation UNet reads its windows' latents and text once encoded: 4000 steps at batch 16
      # take half an hour that way, against hours encoding every batch.
      Stage("interpolation_inputs", (("train.precompute", "--config", "demo-interpolation", "--data", p,
                                      "--out", interpolation_inputs, "--weights", w, "--overwrite"),), ("latents",)),
      train("interpolation", "demo-interpolation", w, os.path.join(x, "interpolation"), ("interpolation_inputs",),
            data=interpolation_inputs),
      train("video_movq", "demo-video-movq", os.path.join(w, "movq"), os.path.join(x, "video_movq"), ("image_movq",)),
      train("video_movq_decoder", "demo-video-movq-decoder", os.path.join(x, "video_movq"),
            os.path.join(x, "video_movq_decoder"), ("video_movq",)),
      train("video_movq_decoder_more", "demo-video-movq-decoder-more", os.path.join(x, "video_movq_decoder"),
            os.path.join(x, "video_movq_decoder_more"), ("video_movq_decoder",)),
      train("video_movq_decoder_long", "demo-video-movq-decoder-long", os.path.join(x, "video_movq_decoder_more"),
            os.path.join(x, "video_movq_decoder_long"), ("video_movq_decoder_more",)),
      Stage("assemble", (), tuple(stage for stage, _ in SHIPPED)),
      Stage("check", (("sample", "a red circle moving right", "--weights", w, "--out", os.path.join(out, "check.gif"),
                       "--overwrite"),), ("assemble",)),
  ]


def assemble(out: str) -> None:
  """Copies the exported models into OUT/weights, which then holds the whole pipeline, with the demo's
  sampling defaults."""
  from kvjax.atomic import staged
  with staged(os.path.join(out, "weights", SAMPLING_DEFAULTS), overwrite=True, folder=False) as staging:
    with open(staging, "w") as f:
      json.dump(DEMO_OPTIONS, f, indent=1)
  for export, folder in SHIPPED:
    with staged(os.path.join(out, "weights", folder), overwrite=True, folder=False) as staging:
      shutil.copytree(os.path.join(out, "exports", export), staging)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m train.demo", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("out", help="working folder (created; re-run the same command to resume)")
  p.add_argument("--videos", type=int, default=600, help="synthetic videos to make (triples of one scene)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--parallel", type=int, default=2, help="stages run at once when their inputs are ready (each "
                 "training run keeps about one CPU core busy)")
  p.add_argument("--max-steps", type=int, help="train every model for at most this many steps (a smoke run)")
  p.add_argument("--install", action="store_true", help=f"copy the finished weights to {DEMO_WEIGHTS}")
  p.add_argument("--keep", help="a folder that outlives OUT (e.g. in the repository): each finished model stage's "
                 "float16 output is copied there, and a later run (another OUT, another machine) takes the "
                 "outputs it holds instead of training them again, where the recipe is the same")
  return p


def install(weights: str, target: str = DEMO_WEIGHTS) -> None:
  """Copies a demo weights folder into the package, every model's parameters in float16 (the shipped demo
  must stay under 30 MB; the null embeddings and the tokenizer are copied as they are)."""
  import jax
  import numpy as np
  from kvjax.atomic import staged
  from kvjax.conversion.store import ConvertedModel, load_converted, save_converted
  from kvjax.models.latent_normalization import LATENTS_FILE
  from kvjax.pipeline.pipeline_weights import FOLDERS
  with staged(target, overwrite=True) as staging:
    for folder in FOLDERS.values():
      model = load_converted(os.path.join(weights, folder))
      half = jax.tree.map(lambda a: np.asarray(a, np.float16), model.params)
      save_converted(ConvertedModel(model.kind, model.config, half, model.extras), os.path.join(staging, folder),
                     source=f"{os.path.join(weights, folder)} in float16")
    for name in ("spiece.model", SAMPLING_DEFAULTS, LATENTS_FILE):
      shutil.copy(os.path.join(weights, name), os.path.join(staging, name))


def _set_fields(config) -> dict:
  """A config's fields that differ from their defaults (nested configs likewise): an option added later,
  at its default, does not make a kept output another recipe's."""
  values = {}
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if dataclasses.is_dataclass(value):
      nested = _set_fields(value)
      default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
      if nested or not dataclasses.is_dataclass(default) or type(default) is not type(value):
        values[field.name] = {"type": type(value).__name__, **nested}
      continue
    if field.default is not dataclasses.MISSING and value == field.default:
      continue
    values[field.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
  return values


def _models_read(config, pipelines) -> dict:
  """The model configurations (as _set_fields) of a training preset's pipeline that its run reads: every
  one but the UNets it does not train (a UNet run reads the MoVQ and text models, a MoVQ run no UNet), so a
  change to one UNet leaves the other models' kept outputs valid."""
  from kvjax.training.train_config import UNET_MODELS
  models = _set_fields(pipelines[config.pipeline])
  return {name: value for name, value in models.items() if name not in UNET_MODELS or name == config.model}


def _recipe(stage: Stage, out: str, plan: list[Stage]) -> dict:
  """What a kept output was made by: the stage's commands (OUT written as "OUT"), the training presets they
  name with their models' configurations, and the same of every stage before it (the videos' count and
  seed among them)."""
  from kvjax.training.train_config import TRAIN_PRESETS
  commands = [[arg.replace(out, "OUT") for arg in command] for command in stage.commands]
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  names = [c[i + 1] for c in stage.commands for i, arg in enumerate(c[:-1]) if c[0] == "train" and arg == "--config"]
  presets = {name: {"training": _set_fields(TRAIN_PRESETS[name]),
                    "models": _models_read(TRAIN_PRESETS[name], PIPELINE_PRESETS)} for name in names}
  after = {name: _recipe(next(s for s in plan if s.name == name), out, plan) for name in stage.after}
  return json.loads(json.dumps({"commands": commands, "presets": presets, "after": after}))


def _take_kept(stage: Stage, out: str, keep: str | None, plan: list[Stage]) -> bool:
  """Copies a kept output of the same recipe into place; True where there was one."""
  kept = None if keep is None or stage.output is None else os.path.join(keep, stage.name)
  if kept is None or not os.path.isfile(os.path.join(kept, RECIPE)):
    return False
  with open(os.path.join(kept, RECIPE)) as f:
    if json.load(f) != _recipe(stage, out, plan):
      print(f"[{stage.name}] {kept} was made by another recipe: training again", file=sys.stderr, flush=True)
      return False
  from kvjax.atomic import staged
  with staged(stage.output, overwrite=True) as staging:
    shutil.copytree(kept, staging, dirs_exist_ok=True, ignore=shutil.ignore_patterns(RECIPE))
  return True


def _keep(stage: Stage, out: str, keep: str | None, plan: list[Stage]) -> None:
  """Copies a finished model stage's output into KEEP/<stage> with the recipe that made it."""
  if keep is None or stage.output is None:
    return
  from kvjax.atomic import staged
  with staged(os.path.join(keep, stage.name), overwrite=True) as staging:
    shutil.copytree(stage.output, staging, dirs_exist_ok=True)
    with open(os.path.join(staging, RECIPE), "w") as f:
      json.dump(_recipe(stage, out, plan), f, indent=1)


def _run_stage(stage: Stage, out: str) -> subprocess.Popen | None:
  """Starts a stage's commands in order (one shell-free chain in a child process), logging to its file."""
  if not stage.commands:
    return None
  # Programs run under the name this one was imported by: `train` from a checkout, `kvjax.cli.train` installed.
  commands = [(program_module(command[0], __package__), *command[1:]) for command in stage.commands]
  chain = " && ".join(shlex.join([sys.executable, "-m", *command]) for command in commands)
  log = open(os.path.join(out, "logs", f"{stage.name}.log"), "a")
  for command in commands:
    print(f"[{stage.name}] python -m {shlex.join(command)}", file=sys.stderr, flush=True)
  return subprocess.Popen(["/bin/sh", "-c", chain], stdout=log, stderr=subprocess.STDOUT)


def _marker(out: str, name: str) -> str:
  return os.path.join(out, f"{name}.done")


def finished_stages(plan: list[Stage], out: str) -> tuple[set[str], list[str]]:
  """(the stages an earlier run finished, the finished ones that another recipe made). Finished: marked done
  after every stage it comes after, so a stage new to the recipe (or done again) makes the stages after it
  run again."""
  done: set[str] = set()
  changed = []
  for stage in plan:
    marker = _marker(out, stage.name)
    if os.path.exists(marker) and all(a in done and os.path.getmtime(_marker(out, a)) <= os.path.getmtime(marker)
                                      for a in stage.after):
      done.add(stage.name)
      with open(marker) as f:
        text = f.read()
      made_by = json.loads(text).get("recipe") if text.startswith("{") else None  # (older markers: a time)
      if made_by is not None and made_by != _recipe(stage, out, plan):
        changed.append(stage.name)
  return done, changed


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.videos < 3 or args.parallel < 1:
    print(f"error: --videos {args.videos} (at least 3: one scene at each speed) and --parallel {args.parallel} "
          "(at least 1)", file=sys.stderr)
    return 2
  if args.max_steps is not None and args.max_steps < 1:
    print(f"error: --max-steps {args.max_steps}: give at least 1", file=sys.stderr)
    return 2
  out = os.path.abspath(args.out)
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  total = time.perf_counter()
  plan = stages(out, args.videos, args.seed, args.max_steps)
  done, changed = finished_stages(plan, out)
  if changed:
    print(f"error: {out} was made by another recipe for stage {', '.join(changed)} (the presets changed since): "
          f"make the demo in a new OUT, or delete OUT/runs/<stage> and OUT/<stage>.done to train it again",
          file=sys.stderr)
    return 2
  for name in sorted(done):
    print(f"[{name}] done earlier", file=sys.stderr)
  running: dict[str, tuple[subprocess.Popen | None, float]] = {}
  looked_up: set[str] = set()  # stages whose --keep folder was looked at
  failed = None
  while len(done) < len(plan) and failed is None:
    for stage in plan:
      ready = stage.name not in done and stage.name not in running and all(a in done for a in stage.after)
      if ready and stage.name not in looked_up and (looked_up.add(stage.name) or _take_kept(stage, out, args.keep, plan)):
        print(f"[{stage.name}] taken from {os.path.join(args.keep, stage.name)}", file=sys.stderr, flush=True)
        running[stage.name] = (None, time.perf_counter())
      elif ready and len(running) < args.parallel:
        running[stage.name] = (_run_stage(stage, out), time.perf_counter())
    time.sleep(0.2)
    for name, (process, started) in list(running.items()):
      if process is not None and process.poll() is None:
        continue
      del running[name]
      if process is not None and process.returncode:
        failed = (name, process.returncode)
        continue
      if name == "assemble":
        assemble(out)
      if process is not None:
        _keep(next(s for s in plan if s.name == name), out, args.keep, plan)
      with open(_marker(out, name), "w") as f:  # with its recipe: a later run finds presets changed since
        json.dump({"seconds": round(time.perf_counter() - started),
                   "recipe": _recipe(next(s for s in plan if s.name == name), out, plan)}, f)
      done.add(name)
      print(f"[{name}] finished in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
  for process, _ in running.values():
    if process is not None:
      process.wait()
  if failed is not None:
    name, code = failed
    print(f"error: stage {name} failed (exit {code}); see {os.path.join(out, 'logs', name + '.log')}; re-run the "
          "same command to resume", file=sys.stderr)
    return code
  print(f"demo ready in {os.path.join(out, 'weights')} ({time.perf_counter() - total:.0f} s this run)", file=sys.stderr)
  if args.install:
    install(os.path.join(out, "weights"))
    print(f"installed into {DEMO_WEIGHTS}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
