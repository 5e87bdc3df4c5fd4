"""A training run in a workdir, as `python -m train` starts it: the weights it starts from, its checkpoints
(resumed where present), its inputs, its settings (WORKDIR/config.json, the same on every resume), the
train loop (kvjax.training.loop) and what watches it: TensorBoard events, validation videos, a progress bar
(kvjax.training.watch, kvjax.training.validation)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

# What may change between the runs of a workdir: the length, and the reaction to a non-finite step (both
# policies compile the same step: only the loop's reaction differs).
RESUMABLE_CHANGES = ("total_steps", "optimizer.nonfinite")


class RunRefused(Exception):
  """A run that cannot start (a bad option, input or workdir): one line, exit 2. A run that stops after it
  started (a non-finite step, a failed save) exits 1 with its own message instead."""


def check_same_run(workdir: str, config) -> None:
  """A workdir belongs to one run: resuming with other settings (RESUMABLE_CHANGES aside) is refused, naming
  the changed fields. Settings a run saved before a field existed read as that field's default."""
  from kvjax.training.overrides import set_fields
  from kvjax.training.train_config import TrainConfig, config_from_dict
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    return
  with open(path) as f:
    try:
      saved = config_from_dict(TrainConfig, json.load(f))
    except (ValueError, TypeError) as e:
      raise RunRefused(f"{path}: not the settings of a run of this kvjax ({e}); use a new --workdir")
  changed = sorted(name for name in set_fields(config, saved) if name not in RESUMABLE_CHANGES)
  if changed:
    raise RunRefused(f"{workdir} holds a run with other settings ({', '.join(changed)}); use a new --workdir")


def _write_json(path: str, value) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(value, f, indent=1)
  os.replace(tmp, path)


def _write_null_embedding(path: str, null) -> None:
  import numpy as np
  with open(path + ".tmp", "wb") as f:
    np.save(f, np.asarray(null, np.float32), allow_pickle=False)
  os.replace(path + ".tmp", path)


def run(config, *, workdir: str, data: str = "synthetic", mesh: str = "", weights: str | None = None,
        tokenizer: str | None = None, init: str | None = None, lpips: str | None = None, data_workers: int = 0,
        coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None,
        distributed: bool = False, peer_timeout: int = 100, validation_prompts: str | None = None,
        validation_every: int | None = None, progress: bool | None = None) -> int:
  """Trains `config` in `workdir` until config.total_steps, resuming from its last complete checkpoint; the
  options are `python -m train`'s, by the same names (`validation_every` None: every checkpoint_every steps;
  `progress` None: a progress bar when stderr is a terminal). Raises RunRefused for a run that cannot start
  (before any work), SystemExit for one that stops (a non-finite step, a failed save); returns 0."""
  import jax
  from kvjax.training.validation import read_prompts, validation_options
  if not 0 <= data_workers <= 256:
    raise RunRefused(f"--data-workers {data_workers}: give 0 (read in this process) to 256")
  prompts = options = None
  if validation_every is not None and validation_prompts is None:
    raise RunRefused(f"--validation-every {validation_every}: give --validation-prompts FILE too")
  if validation_prompts is not None:
    if validation_every is not None and validation_every < 1:
      raise RunRefused(f"--validation-every {validation_every}: give a number of steps, at least 1")
    if config.is_movq:
      raise RunRefused(f"--validation-prompts {validation_prompts}: sampling videos applies to UNet runs "
                       f"(keyframe, interpolation), not to {config.model.replace('_', ' ')} runs")
    try:
      prompts, options = read_prompts(validation_prompts), validation_options(config, weights)
    except ValueError as e:
      raise RunRefused(str(e))
    validation_every = validation_every or config.checkpoint_every
  if coordinator or distributed:
    if not 1 <= peer_timeout <= 86400:
      raise RunRefused(f"--peer-timeout {peer_timeout} must be in [1, 86400] seconds")
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                               process_id=process_id, heartbeat_timeout_seconds=peer_timeout)
  from kvjax.atomic import OutputError, check_writable
  from kvjax.sharding import make_mesh
  from kvjax.training.checkpointing import NULL_EMBEDDING, CheckpointError, TrainCheckpoints, abstract_with_shardings
  from kvjax.training.inputs import GENERATED_SOURCES, step_inputs
  from kvjax.training.loop import metrics_log, resume_check, train_loop
  from kvjax.training.starting_weights import lpips_weights, movq_start, training_weights, unet_start
  from kvjax.training.trainer import make_trainer

  if config.global_batch_size % jax.process_count():
    raise RunRefused(f"batch size {config.global_batch_size} does not split over {jax.process_count()} hosts")
  if data not in GENERATED_SOURCES and not os.path.isdir(data):
    raise RunRefused(f"--data {data}: no such folder (make one with `python -m train.prepare_data`)")
  try:
    device_mesh = make_mesh(mesh)
  except ValueError as e:
    raise RunRefused(f"--mesh {mesh}: {e}")
  try:
    check_writable(workdir)  # before any weights load
  except OutputError as e:
    raise RunRefused(f"--workdir {workdir}: {e}")
  if prompts is not None and jax.process_count() > 1:
    raise RunRefused(f"--validation-prompts {validation_prompts}: validation runs in one-process runs only "
                     f"(this run has {jax.process_count()} processes); sample an export instead")
  main_host = jax.process_index() == 0
  say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if main_host else (lambda *a: None)

  pipeline = text_tokenizer = start = lpips_params = None
  try:
    if config.is_movq:
      start, said = movq_start(config, weights)
      say(f"{config.model.replace('_', ' ')} starts from {said}")
      lpips_params = lpips_weights(config, lpips)
      if lpips_params is None and config.movq.perceptual_weight > 0:
        say(f"WARNING: no --lpips weights: the perceptual loss (weight {config.movq.perceptual_weight}) is OFF; "
            "training uses the reconstruction and adversarial terms alone (convert LPIPS with `python -m "
            "convert lpips`)")
    else:
      if weights is None:
        say("no --weights: the encoders and the UNet start from RANDOM weights, captions use a stand-in tokenizer")
      pipeline, text_tokenizer = training_weights(config, weights, tokenizer)
      if init is not None:
        pipeline = unet_start(config, pipeline, init, device_mesh)
        say(f"the {config.model} UNet starts from {init}")
      if config.model == "keyframe" and config.keyframe.mode == "video" and config.keyframe.video_input_from_image:
        from kvjax.training.keyframe_loss import video_input_from_image
        pipeline = pipeline.replace(keyframe=video_input_from_image(pipeline.keyframe,
                                                                    config.model_config.out_channels))
        say("its video input layer starts as its image input layer (condition channels zero)")
    if init is not None and config.is_movq:
      raise ValueError("--init applies to UNet runs; MoVQ runs start from --weights")
  except (FileNotFoundError, ValueError) as e:
    raise RunRefused(str(e))
  null = None if config.is_movq else getattr(pipeline, f"{config.model}_null")

  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise RunRefused(f"--workdir {workdir}: {e.strerror or e}")
  check_same_run(workdir, config)
  try:
    checkpoints = TrainCheckpoints(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                                   save_every=config.checkpoint_every)
  except CheckpointError as e:
    raise RunRefused(str(e))
  if main_host:
    try:
      _write_json(os.path.join(workdir, "config.json"), dataclasses.asdict(config))
      if not config.is_movq:
        _write_null_embedding(os.path.join(workdir, NULL_EMBEDDING), null)
    except OSError as e:
      raise RunRefused(f"writing into {workdir} failed ({e.strerror or e})")

  base = getattr(pipeline, config.model) if config.lora.enabled else None
  trainer = make_trainer(config, device_mesh, lpips_params=lpips_params, null_embedding=null, base=base)
  if config.lora.enabled:
    from kvjax.params import count_params
    say(f"LoRA: rank {config.lora.rank}, alpha {config.lora.alpha or config.lora.rank:g} on "
        f"{', '.join(config.lora.targets)}: {count_params(trainer.abstract_state().params):,} adapter parameters "
        f"train; the {config.model} UNet is frozen ({config.lora.base_dtype})")
  try:
    inputs = step_inputs(config, data, weights=pipeline, tokenizer=text_tokenizer, mesh=device_mesh,
                         local_batch_size=config.global_batch_size // jax.process_count(),
                         shard_index=jax.process_index(), shard_count=jax.process_count(),
                         worker_count=data_workers)
  except (FileNotFoundError, ValueError) as e:
    raise RunRefused(f"--data {data}: {e}")
  try:
    step, state, data_state = checkpoints.restore_latest(
        abstract_with_shardings(trainer.abstract_state(), trainer.shardings), check=resume_check(inputs), warn=say)
  except CheckpointError as e:
    raise RunRefused(str(e))
  skipped = 0
  if step is None:
    step, state = 0, trainer.init_state(start if config.is_movq else getattr(pipeline, config.model))
  else:
    skipped = int(data_state.get("skipped_steps", 0))
    say(f"resumed from step {step} ({checkpoints.directory})")
  try:
    metrics_file = metrics_log(workdir, step, say) if main_host else None
  except OSError as e:
    raise RunRefused(f"{os.path.join(workdir, 'metrics.jsonl')}: {e.strerror or e}")

  events = bar = validate = None
  if main_host and step < config.total_steps:
    from kvjax.training.watch import EventLog, ProgressBar
    # Its first step's purge marker drops what a killed run logged past this checkpoint (as metrics.jsonl).
    events = EventLog(workdir, first_step=step + 1)
    if sys.stderr.isatty() if progress is None else progress:
      bar = ProgressBar(step, config.total_steps)
      say = bar.say
  if prompts is not None and step < config.total_steps:
    from kvjax.training.validation import Validator
    validate = Validator(config, prompts, pipeline, text_tokenizer, options, workdir, mesh=device_mesh,
                         events=events, say=say, unet_weights=trainer.unet_weights)
    say(f"validation: {len(prompts)} prompt{'s' * (len(prompts) != 1)} every {validation_every} steps into "
        f"{validate.folder}")

  try:
    step = train_loop(config, trainer, inputs, checkpoints, step, state, say=say, metrics_file=metrics_file,
                      skipped=skipped, events=events, validate=validate, validate_every=validation_every or 0,
                      progress=bar, devices=jax.local_devices())
    checkpoints.wait()
    checkpoints.close()
  except CheckpointError as e:  # a full disk, a folder gone: named, with the checkpoint to resume from
    raise SystemExit(f"error: {e}: make room (or fix the folder) and run the same command to resume")
  finally:
    if bar is not None:
      bar.close()
    if events is not None:
      events.close()
  say(f"done: step {step}, checkpoints {checkpoints.all_steps()} in {checkpoints.directory}")
  return 0
