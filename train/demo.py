"""Rebuilds the embedded demo: a synthetic world of moving shapes, its dataset, and every model of a small
Kandinsky Video trained on it by kvjax (docs/demo.md):

  python -m train.demo OUT [--videos 600] [--parallel 2] [--from-scratch] [--max-steps N] [--install]

The shipped weights (kvjax/demo/weights) hold the recipe that made them (recipe.json). A stage whose recipe
(its computation and every stage it reads) is the recorded one takes its shipped output instead of running,
so with the recipe unchanged the command assembles OUT/weights from them in seconds (then `check` samples a
video). A stage whose recipe changed runs, and with it the stages it reads whose outputs do not ship
(intermediate models do not: those stages train from nothing); stages that do not lead to it are taken.
--from-scratch runs every stage.

Stages (training settings: train/demo_recipe.py, a library preset plus --set overrides; OUT/<stage>.done
marks a finished one with its recipe; re-running the command resumes unfinished stages from their
checkpoints, and refuses an OUT whose finished stages another recipe made; stages whose inputs are ready
run --parallel at once):
  videos       python -m train.make_shapes OUT/videos ...         mp4 files and captions
  prepared     python -m train.prepare_data OUT/videos OUT/prepared ...
  init         python -m train.init_weights OUT/weights ...       random weights, tokenizer of the captions
  image_movq   python -m train --config image-movq-tiny --set ... then train.export into OUT/weights/movq
  latents      python -m train.calibrate_latents OUT/weights ...  its latents' map to unit variance
  video_movq   python -m train --config video-movq-tiny --set ...  the temporal decoder, from the image MoVQ
  video_movq_decoder, video_movq_decoder_more, video_movq_decoder_long   its whole decoder (encoder frozen)
  keyframe_image  python -m train --config keyframe-tiny --set ...   the keyframe UNet in image mode
  keyframe, keyframe_motion   video mode, every weight (--init: the stage before)
  keyframe_first, keyframe_place   image mode on clips' first frames
  keyframe_temporal, keyframe_temporal_more, keyframe_settle   video mode, the temporal layers alone
  interpolation_inputs  python -m train.precompute --config interpolation-tiny ...  windows' latents and text
  interpolation  python -m train --config interpolation-tiny --data OUT/inputs/interpolation ...
  assemble     the models that ship join OUT/weights, with the recipe that made them
  check        python -m sample ... --weights OUT/weights           one video, to look at

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

from kvjax.cli import program_module, program_name
from kvjax.demo import DEMO_OPTIONS, DEMO_WEIGHTS, SAMPLING_DEFAULTS
from .demo_recipe import TRAINING, train_config  # noqa: F401 (a stage's TrainConfig, for benches)

# Videos of 2 s at 24 fps, 256 px, prepared at 128 px (the default size filter keeps them): a 12-frame window
# 4 frames apart (45 source frames) fits in every clip.
VIDEO_SECONDS, VIDEO_SIZE, FRAME_SIZE = 2.0, 256, 128
RECIPE = "recipe.json"  # in a weights folder: the recipe of every stage that made it
# The stages whose outputs ship: {stage: ((its name in the weights folder, where the stage writes it in OUT))}.
# Those written to OUT/exports join OUT/weights in `assemble`.
SHIPPED = {
    "init": (("t5", "weights/t5"), ("projections", "weights/projections"), ("spiece.model", "weights/spiece.model")),
    "image_movq": (("movq", "weights/movq"),),
    "latents": (("latents.json", "weights/latents.json"),),
    "video_movq_decoder_long": (("video_movq", "exports/video_movq_decoder_long"),),
    "keyframe_settle": (("keyframe", "exports/keyframe_settle"),),
    "interpolation": (("interpolation", "exports/interpolation"),),
}
# init writes the whole starting weights folder (the random UNets and MoVQs that later stages start from);
# only its text encoder and tokenizer ship, so it is taken only where no stage that reads it runs.
PARTLY_SHIPPED = ("init",)
# What a UNet stage reads: the prepared clips and OUT/weights (init's text encoder and starting UNets, the
# image MoVQ, its latents' map).
_ENCODERS = ("prepared", "init", "image_movq", "latents")


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  commands: tuple[tuple[str, ...], ...]  # argvs of `python -m ...`
  after: tuple[str, ...] = ()  # the stages whose outputs it reads
  output: str | None = None  # a model stage's exported folder


def _config(stage: str) -> tuple[str, ...]:
  """A training stage's settings as arguments: its base preset and overrides (train/demo_recipe.py)."""
  base, overrides = TRAINING[stage]
  return ("--config", base, *(arg for value in overrides for arg in ("--set", value)))


def stages(out: str, videos: int, seed: int, max_steps: int | None = None) -> list[Stage]:
  """The recipe, in an order that respects `after`. UNet stages read the frozen encoders from OUT/weights
  (random text encoder, the trained image MoVQ) and export to OUT/exports; `assemble` gathers them."""
  v, p, w, x = (os.path.join(out, name) for name in ("videos", "prepared", "weights", "exports"))
  run = lambda name: os.path.join(out, "runs", name)

  def train(name, weights, export_to, after, *extra, data=p) -> Stage:
    cap = () if max_steps is None else ("--steps", str(max_steps))
    # Exports in float16, the shipped form.
    return Stage(name, (("train", *_config(name), "--data", data, "--weights", weights, "--workdir", run(name), *cap,
                         *extra), ("train.export", run(name), export_to, "--overwrite", "--dtype", "float16")),
                 after, export_to)

  def keyframe(name, before):
    return train(name, w, os.path.join(x, name), (*_ENCODERS, before), "--init", os.path.join(x, before))

  def decoder(name, before):
    return train(name, os.path.join(x, before), os.path.join(x, name), ("prepared", before))

  captions = os.path.join(v, "captions.jsonl")
  interpolation_inputs = os.path.join(out, "inputs", "interpolation")
  return [
      Stage("videos", (("train.make_shapes", v, "--videos", str(videos), "--seconds", str(VIDEO_SECONDS),
                        "--size", str(VIDEO_SIZE), "--seed", str(seed), "--overwrite"),)),
      Stage("prepared", (("train.prepare_data", v, p, "--captions", captions, "--short-side", str(FRAME_SIZE),
                          "--workers", "2", "--seed", str(seed), "--no-progress"),), ("videos",)),
      Stage("init", (("train.init_weights", w, "--pipeline", "demo", "--captions", captions, "--seed", str(seed),
                      "--overwrite"),), ("videos",)),
      train("image_movq", os.path.join(w, "movq"), os.path.join(w, "movq"), ("prepared", "init")),
      # Its latents at zero mean and unit variance (OUT/weights/latents.json): the UNets learn those.
      Stage("latents", (("train.calibrate_latents", w, *_config("keyframe_image"), "--data", p, "--std", "1",
                         "--overwrite"),), ("prepared", "image_movq")),
      # The keyframe UNet's stages are the longest chain: they start first, beside the interpolation UNet.
      train("keyframe_image", w, os.path.join(x, "keyframe_image"), _ENCODERS),
      keyframe("keyframe", "keyframe_image"),
      keyframe("keyframe_motion", "keyframe"),
      keyframe("keyframe_first", "keyframe_motion"),
      keyframe("keyframe_temporal", "keyframe_first"),
      keyframe("keyframe_temporal_more", "keyframe_temporal"),
      keyframe("keyframe_place", "keyframe_temporal_more"),
      keyframe("keyframe_settle", "keyframe_place"),
      # The interpolation UNet reads its windows' latents and text encoded once, not every batch.
      Stage("interpolation_inputs", (("train.precompute", *_config("interpolation"), "--data", p,
                                      "--out", interpolation_inputs, "--weights", w, "--overwrite"),), _ENCODERS),
      train("interpolation", w, os.path.join(x, "interpolation"), (*_ENCODERS, "interpolation_inputs"),
            data=interpolation_inputs),
      train("video_movq", os.path.join(w, "movq"), os.path.join(x, "video_movq"), ("prepared", "image_movq")),
      decoder("video_movq_decoder", "video_movq"),
      decoder("video_movq_decoder_more", "video_movq_decoder"),
      decoder("video_movq_decoder_long", "video_movq_decoder_more"),
      Stage("assemble", (), tuple(SHIPPED)),
      Stage("check", (("sample", "a red circle moving right", "--weights", w, "--out", os.path.join(out, "check.gif"),
                       "--overwrite"),), ("assemble",)),
  ]


def _set_fields(config) -> dict:
  """A config's fields that differ from their defaults (nested configs likewise): an option added later,
  at its default, does not make a recorded stage another recipe's."""
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
  """The model configurations (as _set_fields) of a training config's pipeline that its run reads: every
  one but the UNets it does not train (a UNet run reads the MoVQ and text models, a MoVQ run no UNet), so a
  change to one UNet leaves the other models' stages as recorded."""
  from kvjax.training.train_config import UNET_MODELS
  models = _set_fields(pipelines[config.pipeline])
  return {name: value for name, value in models.items() if name not in UNET_MODELS or name == config.model}


def _computes(stage: Stage, out: str) -> dict:
  """What a stage computes, as recipes compare it (not the commands' spelling): each command's program and
  arguments (OUT written as "OUT") without its --config and --set, the training config those resolve to
  (its set fields and the models its run reads), and the stages it reads."""
  from kvjax.pipeline.pipeline_config import PIPELINE_PRESETS
  from kvjax.training.overrides import apply_overrides
  from kvjax.training.train_config import TRAIN_PRESETS
  commands, configs = [], []
  for command in stage.commands:
    arguments, base, overrides = [], None, []
    words = iter(command)
    for word in words:
      if word == "--config":
        base = next(words)
      elif word == "--set":
        overrides.append(next(words))
      else:
        arguments.append(word.replace(out, "OUT"))
    commands.append(arguments)
    if base is not None:
      config = apply_overrides(TRAIN_PRESETS[base], overrides)
      configs.append({"training": _set_fields(config), "models": _models_read(config, PIPELINE_PRESETS)})
  return json.loads(json.dumps({"commands": commands, "configs": configs, "after": list(stage.after)}))


def _recipe(stage: Stage, out: str, plan: list[Stage]) -> dict:
  """A stage's recipe: what it and every stage it reads (directly or not) compute, by stage name."""
  by_name = {s.name: s for s in plan}
  recipe, todo = {}, [stage.name]
  while todo:
    name = todo.pop()
    if name not in recipe:
      recipe[name] = _computes(by_name[name], out)
      todo += by_name[name].after
  return dict(sorted(recipe.items()))


def shipped_recipe(plan: list[Stage], out: str) -> dict:
  """The record a weights folder of this recipe holds: the recipes of the stages whose outputs ship."""
  recipe = {}
  for name in SHIPPED:
    recipe |= _recipe(next(s for s in plan if s.name == name), out, plan)
  return {"stages": dict(sorted(recipe.items()))}


def read_record(weights: str) -> dict:
  """The recorded recipes of a weights folder's stages ({} where it holds none)."""
  path = os.path.join(weights, RECIPE)
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f).get("stages", {})


def actions(plan: list[Stage], out: str, record: dict) -> dict[str, str]:
  """What each stage does: "take" its shipped output (its recipe is the recorded one), "run", or "skip" (no
  stage that runs reads it). Every stage `assemble` and `check` need is taken or run; a stage that runs needs
  every stage it reads."""
  matches = {name for name in SHIPPED
             if all(record.get(n) == recipe for n, recipe in _recipe(next(s for s in plan if s.name == name),
                                                                      out, plan).items())}
  action, wanted = {}, {"assemble", "check"}
  for stage in reversed(plan):  # every stage that reads this one is decided before it
    if stage.name not in wanted:
      action[stage.name] = "skip"
      continue
    readers_run = any(stage.name in s.after and action[s.name] == "run" and s.commands  # (assemble reads no init)
                      for s in plan if s.name in action)
    if stage.name in matches and not (stage.name in PARTLY_SHIPPED and readers_run):
      action[stage.name] = "take"
    else:
      action[stage.name] = "run"
      wanted.update(stage.after)
  return {s.name: action[s.name] for s in plan}


def _take(stage: Stage, out: str, shipped: str) -> None:
  """Copies a stage's shipped outputs into OUT, where the stage would have written them."""
  from kvjax.atomic import staged
  for name, path in SHIPPED[stage.name]:
    source = os.path.join(shipped, name)
    with staged(os.path.join(out, path), overwrite=True, folder=os.path.isdir(source)) as staging:
      if os.path.isdir(source):
        shutil.copytree(source, staging, dirs_exist_ok=True)
      else:
        shutil.copyfile(source, staging)


def assemble(out: str, plan: list[Stage]) -> None:
  """Copies the exported models into OUT/weights, which then holds the whole pipeline, with the demo's
  sampling defaults and the recipe that made it."""
  from kvjax.atomic import staged
  weights = os.path.join(out, "weights")
  for name, value in ((SAMPLING_DEFAULTS, DEMO_OPTIONS), (RECIPE, shipped_recipe(plan, out))):
    with staged(os.path.join(weights, name), overwrite=True, folder=False) as staging:
      with open(staging, "w") as f:
        json.dump(value, f, indent=1)
  for outputs in SHIPPED.values():
    for name, path in outputs:
      if path.startswith("exports/"):
        with staged(os.path.join(weights, name), overwrite=True, folder=False) as staging:
          shutil.copytree(os.path.join(out, path), staging)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog=program_name("train.demo", __package__), description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("out", help="working folder (created; re-run the same command to resume)")
  p.add_argument("--videos", type=int, default=600, help="synthetic videos to make (triples of one scene)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--parallel", type=int, default=2, help="stages run at once when their inputs are ready (each "
                 "training run keeps about one CPU core busy)")
  p.add_argument("--max-steps", type=int, help="train every model for this many steps (a smoke run)")
  p.add_argument("--from-scratch", action="store_true", help=f"run every stage, taking nothing from {DEMO_WEIGHTS}")
  p.add_argument("--install", action="store_true", help=f"copy the finished weights to {DEMO_WEIGHTS}")
  return p


def install(weights: str, target: str = DEMO_WEIGHTS) -> None:
  """Copies a demo weights folder into the package, every model's parameters in float16 (the shipped demo
  must stay under 30 MB; the null embeddings, the tokenizer and the recipe are copied as they are)."""
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
    for name in ("spiece.model", SAMPLING_DEFAULTS, LATENTS_FILE, RECIPE):
      shutil.copy(os.path.join(weights, name), os.path.join(staging, name))


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


def finished_stages(plan: list[Stage], out: str, action: dict[str, str] | None = None) -> tuple[set[str], list[str]]:
  """(the stages an earlier run finished, the finished ones that another recipe made). Finished: marked done
  after every stage it reads (or that this plan skips), so a stage new to the recipe (or done again) makes the
  stages after it run again. A stage taken from the shipped weights counts only where this plan takes it."""
  action = action or {}
  done: set[str] = set()
  changed = []
  for stage in plan:
    marker = _marker(out, stage.name)
    if not os.path.exists(marker) or not all(
        action.get(a) == "skip" or (a in done and os.path.getmtime(_marker(out, a)) <= os.path.getmtime(marker))
        for a in stage.after):
      continue
    with open(marker) as f:
      text = f.read()
    made = json.loads(text) if text.startswith("{") else {}  # (older markers: a time)
    if made.get("taken") and action.get(stage.name) != "take":
      continue
    done.add(stage.name)
    if made.get("recipe") is not None and made["recipe"] != _recipe(stage, out, plan):
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
  total = time.perf_counter()
  plan = stages(out, args.videos, args.seed, args.max_steps)
  action = actions(plan, out, {} if args.from_scratch else read_record(DEMO_WEIGHTS))
  done, changed = finished_stages(plan, out, action)
  if changed:
    print(f"error: {out} was made by another recipe for stage {', '.join(changed)} (the recipe changed since): "
          f"make the demo in a new OUT, or delete OUT/runs/<stage> and OUT/<stage>.done to train it again",
          file=sys.stderr)
    return 2
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  for name in sorted(done):
    print(f"[{name}] done earlier", file=sys.stderr)
  skipped = {name for name, what in action.items() if what == "skip"}
  running: dict[str, tuple[subprocess.Popen | None, float]] = {}
  failed = None
  while len(done | skipped) < len(plan) and failed is None:
    for stage in plan:
      ready = (stage.name not in done | skipped and stage.name not in running
               and all(a in done | skipped for a in stage.after))
      if ready and action[stage.name] == "take":
        _take(stage, out, DEMO_WEIGHTS)
        print(f"[{stage.name}] taken from {DEMO_WEIGHTS} (the same recipe)", file=sys.stderr, flush=True)
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
        assemble(out, plan)
      with open(_marker(out, name), "w") as f:  # with its recipe: a later run finds a recipe changed since
        json.dump({"seconds": round(time.perf_counter() - started), "taken": action[name] == "take",
                   "recipe": _recipe(next(s for s in plan if s.name == name), out, plan)}, f)
      done.add(name)
      if action[name] == "run":
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
