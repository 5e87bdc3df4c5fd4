"""Training never trains on NaN quietly and survives damaged checkpoints, checked in-process with a tiny
stand-in model through the real step machinery (make_train_step, jit_train_step, make_gan_train_step), the
real train loop of `python -m train` (kvjax.training.loop) and real orbax checkpoints whose files the tests
damage."""

import dataclasses
import errno
import gc
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kvjax.training import checkpointing
from kvjax.training.checkpointing import CheckpointError, TrainCheckpoints, abstract_with_shardings
from kvjax.training.train_config import TRAIN_PRESETS
from kvjax.sharding import make_mesh
from kvjax.training.movq_gan import GANState, MoVQTrainingConfig, make_gan_train_step
from kvjax.training.optimizer import OptimizerConfig, make_optimizer
from kvjax.sharding import batch_sharding
from kvjax.training.train_state import (create_state, jit_train_step, make_train_step, nonfinite_paths,
                                        state_shardings)
from kvjax.training import loop
from kvjax.training.loop import metrics_log, resume_check, train_loop

NAN = float("nan")


class StandIn:
  """A two-parameter regression trained by the real train step: loss = mean((x w + b - 1)^2) + k z, where the
  batch's k (0 normally) lets a test blow up the gradient norm alone (k = 1e38: grad norm inf, loss finite)."""

  def __init__(self, policy="stop"):
    self.optimizer_config = OptimizerConfig(learning_rate=0.05, warmup_steps=1, decay_steps=10, ema_decay=0.5,
                                            nonfinite=policy)
    # w large enough for orbax to store it in a data file of its own (small values live in the index)
    self.params = {"w": np.full((256, 16), 0.01, np.float32), "b": np.zeros((16,), np.float32),
                   "z": np.zeros((), np.float32)}
    trainable = jax.tree.map(lambda _: True, self.params)
    self.optimizer = make_optimizer(self.optimizer_config, trainable)
    self.mesh = make_mesh("", jax.devices()[:1])
    self.shardings = state_shardings(self.params, self.optimizer, self.mesh, ema=True)

    def loss(params, batch, rng):
      y = batch["x"] @ params["w"] + params["b"]
      return jnp.mean(jnp.square(y - 1.0)) + jnp.sum(batch["k"]) * params["z"]

    self.compiled = jit_train_step(make_train_step(loss, self.optimizer, self.optimizer_config, trainable),
                                   self.shardings, self.mesh)

  def init_state(self):
    return jax.jit(lambda p: create_state(p, self.optimizer, True), out_shardings=self.shardings)(self.params)

  def abstract_state(self):
    abstract = jax.eval_shape(lambda p: create_state(p, self.optimizer, True), self.params)
    return abstract_with_shardings(abstract, self.shardings)

  def step(self, state, batch):
    return self.compiled(state, batch)

  def batch(self, step, nan=False, inf_grad=False):
    rng = np.random.default_rng(step)
    x = rng.normal(size=(2, 256)).astype(np.float32)
    if nan:
      x[0, 0] = NAN
    placed = jax.device_put({"x": x, "k": np.full((2,), 1e38 if inf_grad else 0.0, np.float32)}, batch_sharding(self.mesh))
    return placed


class Inputs:
  """StepInputs' interface: batches by step (NaN or an infinite gradient at the given 1-based steps)."""

  def __init__(self, model, nan_at=(), inf_grad_at=()):
    self.model, self.nan_at, self.inf_grad_at, self.global_batches = model, set(nan_at), set(inf_grad_at), 0

  def next_batch(self, step):
    self.global_batches = step + 1
    return self.model.batch(step, nan=step + 1 in self.nan_at, inf_grad=step + 1 in self.inf_grad_at)

  def start_at(self, global_batches):
    if not isinstance(global_batches, int) or global_batches < 0:  # as StepInputs.start_at
      raise ValueError(f"a data position must be a number of global batches, got {global_batches!r}")
    self.global_batches = global_batches


@pytest.fixture(scope="module")
def model():
  return StandIn()


def _config(model, policy, steps=6, every=2):
  return dataclasses.replace(TRAIN_PRESETS["keyframe-tiny"], total_steps=steps, log_every=every,
                             checkpoint_every=every, keep_checkpoints=10,
                             optimizer=dataclasses.replace(model.optimizer_config, nonfinite=policy))


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves((state.params, state.opt_state, state.ema_params))]


def _run(model, tmp_path, policy, nan_at=(), inf_grad_at=(), steps=6, every=2):
  lines = []
  checkpoints = TrainCheckpoints(tmp_path / "checkpoints", keep=10, save_every=every)
  metrics = open(tmp_path / "metrics.jsonl", "a")
  try:
    train_loop(_config(model, policy, steps, every), model, Inputs(model, nan_at, inf_grad_at), checkpoints, 0,
               model.init_state(), say=lines.append, metrics_file=metrics)
  finally:
    metrics.close()
    checkpoints.wait()
  return checkpoints, lines


def test_a_nonfinite_step_leaves_the_state_as_it_was(model):
  state = model.init_state()
  state, metrics = model.step(state, model.batch(0))
  assert float(metrics["nonfinite"]) == 0 and np.isfinite(float(metrics["loss"]))
  before = _leaves(state)
  for batch in (model.batch(1, nan=True), model.batch(1, inf_grad=True)):
    state, metrics = model.step(state, batch)
    assert float(metrics["nonfinite"]) == 1
    for a, b in zip(before, _leaves(state)):
      np.testing.assert_array_equal(a, b)
  assert int(state.step) == 3  # the counter moves on: the next step draws new randomness
  state, metrics = model.step(state, model.batch(3))
  assert float(metrics["nonfinite"]) == 0 and not all(np.array_equal(a, b) for a, b in zip(before, _leaves(state)))


def test_nonfinite_paths_of_a_sharded_state():
  from jax.sharding import NamedSharding, PartitionSpec
  mesh = make_mesh("fsdp=8")
  values = np.zeros((16, 4), np.float32)
  values[13, 2] = np.inf  # in the seventh device's shard alone
  tree = {"a": jax.device_put(values, NamedSharding(mesh, PartitionSpec("fsdp"))),
          "b": jax.device_put(np.ones((3,), np.float32), NamedSharding(mesh, PartitionSpec())),
          "count": jnp.zeros((), jnp.int32)}
  assert nonfinite_paths(tree) == ["['a']"]
  assert nonfinite_paths({"b": tree["b"], "count": tree["count"]}) == []


def test_stop_names_the_step_and_writes_no_checkpoint_after_it(model, tmp_path):
  # NaN at step 3, found at step 4 (the next log and checkpoint step), before the save of step 4.
  with pytest.raises(SystemExit) as stopped:
    _run(model, tmp_path, "stop", nan_at=(3,))
  message = str(stopped.value)
  assert message.startswith("error: step 3: the loss is NaN (grad norm NaN); stopped before updating; the last "
                            "checkpoint (step 2) holds finite weights"), message
  assert "\n" not in message
  checkpoints = TrainCheckpoints(tmp_path / "checkpoints")
  assert checkpoints.all_steps() == [2]
  step, state, data = checkpoints.restore_latest(model.abstract_state())
  assert step == 2 and nonfinite_paths(state) == [] and data["global_batches"] == 2
  assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [2]


def test_stop_on_an_infinite_gradient_norm_with_a_finite_loss(model, tmp_path):
  with pytest.raises(SystemExit, match=r"^error: step 5: the grad norm is inf \(loss [0-9.]+\); stopped before "
                     r"updating; the last checkpoint \(step 4\) holds finite weights"):
    _run(model, tmp_path, "stop", inf_grad_at=(5,), every=1)
  assert TrainCheckpoints(tmp_path / "checkpoints").all_steps() == [1, 2, 3, 4]


def test_skip_drops_the_updates_counts_them_and_trains_on(model, tmp_path):
  checkpoints, lines = _run(model, tmp_path, "skip", nan_at=(3,), inf_grad_at=(4,))
  warnings = [line for line in lines if line.startswith("WARNING")]
  assert warnings == [
      "WARNING: step 3: the loss is NaN (grad norm NaN); skipped its update (1 step skipped so far)",
      warnings[1]]
  assert warnings[1].startswith("WARNING: step 4: the grad norm is inf (loss ") and "(2 steps skipped so far)" in warnings[1]
  records = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
  assert [(r["step"], r["skipped_steps"]) for r in records] == [(2, 0), (4, 2), (6, 2)]
  assert "nonfinite" not in records[0]
  assert checkpoints.all_steps() == [2, 4, 6]
  for step in (2, 4, 6):  # every checkpoint holds finite weights, and the count resumes
    state, data = checkpoints.restore(step, model.abstract_state())
    assert nonfinite_paths(state) == [] and data["skipped_steps"] == {2: 0, 4: 2, 6: 2}[step]
  # steps 3 and 4 left the weights as step 2 had them: steps 5 and 6 trained from there
  two, _ = checkpoints.restore(2, model.abstract_state())
  four, _ = checkpoints.restore(4, model.abstract_state())
  for a, b in zip(_leaves(two), _leaves(four)):
    np.testing.assert_array_equal(a, b)
  assert int(four.step) == 4


def test_skip_stops_all_the_same_when_no_step_trains(model, tmp_path, monkeypatch):
  monkeypatch.setattr(loop, "MAX_SKIPPED_IN_A_ROW", 3)
  with pytest.raises(SystemExit, match=r"^error: step 6: the last 3 steps were all skipped \(non-finite: the loss is "
                     r"NaN \(grad norm NaN\)\); stopped, as no step trains; the last checkpoint \(step 5\) holds "
                     r"finite weights$"):
    _run(model, tmp_path, "skip", nan_at=(2, 4, 5, 6, 7, 8), steps=8, every=1)
  assert TrainCheckpoints(tmp_path / "checkpoints").all_steps() == [1, 2, 3, 4, 5]


def test_gan_step_drops_both_updates_on_a_nonfinite_discriminator(tmp_path):
  g_params, d_params = {"w": jnp.ones((3,))}, {"v": jnp.ones((3,))}
  cfg = OptimizerConfig(learning_rate=0.1, warmup_steps=1, decay_steps=10, ema_decay=0.0)
  g_opt = make_optimizer(cfg, jax.tree.map(lambda _: True, g_params))
  d_opt = make_optimizer(cfg, jax.tree.map(lambda _: True, d_params))

  def generator_loss(params, disc, lpips, frames, step):
    fake = frames * params["w"].sum()
    return jnp.mean(jnp.square(fake - frames)) + jnp.sum(params["w"] ** 2), ({"nll": jnp.float32(0)}, fake)

  def discriminator_loss(disc, real, fake, step, lecam):
    loss = jnp.sum(disc["v"] ** 2) * jnp.mean(real)  # NaN where a frame is (uint8 frames: via the batch scale)
    return loss, (jnp.mean(real), jnp.mean(fake))

  step = jax.jit(make_gan_train_step(
      MoVQTrainingConfig(discriminator_optimizer=cfg), generator_loss=generator_loss,
      discriminator_loss=discriminator_loss, generator_optimizer=g_opt, discriminator_optimizer=d_opt,
      generator_optimizer_config=cfg, trainable=jax.tree.map(lambda _: True, g_params)))
  state = GANState(create_state(g_params, g_opt, False), create_state(d_params, d_opt, False), jnp.zeros((2,)))
  frames = np.full((1, 1, 2, 2, 3), 100, np.uint8)
  state, metrics = step(state, {"frames": frames}, {})
  assert float(metrics["nonfinite"]) == 0
  before = [np.asarray(x) for x in jax.tree.leaves(state)]

  def nan_discriminator(disc, real, fake, step, lecam):
    loss, aux = discriminator_loss(disc, real, fake, step, lecam)
    return loss * jnp.float32(NAN), aux

  bad_step = jax.jit(make_gan_train_step(
      MoVQTrainingConfig(discriminator_optimizer=cfg), generator_loss=generator_loss,
      discriminator_loss=nan_discriminator, generator_optimizer=g_opt, discriminator_optimizer=d_opt,
      generator_optimizer_config=cfg, trainable=jax.tree.map(lambda _: True, g_params)))
  after, metrics = bad_step(state, {"frames": frames}, {})
  assert float(metrics["nonfinite"]) == 1 and np.isnan(float(metrics["discriminator_loss"]))
  after_leaves = [np.asarray(x) for x in jax.tree.leaves(after)]
  for a, b in zip(before, after_leaves):
    if a.dtype.kind == "f":
      np.testing.assert_array_equal(a, b)
  assert int(after.step) == int(state.step) + 1


# --- damaged checkpoints ---------------------------------------------------------------------------------

def _largest_array_file(step_dir):
  files = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state") for name in names
           if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep and "ocdbt.process_" in root]
  return max(files, key=os.path.getsize)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


DAMAGE = {
    "truncated array file": lambda d: _truncate(_largest_array_file(d)),
    "deleted array manifest": lambda d: os.remove(d / "state" / "manifest.ocdbt"),
    "deleted tree metadata": lambda d: os.remove(d / "state" / "_METADATA"),  # the TrainState's structure
    "missing data-state file": lambda d: os.remove(d / "data" / "metadata"),
    "data state without a data position": lambda d: (d / "data" / "metadata").write_text('{"skipped_steps": 0}'),
    "a data position past the data": lambda d: (d / "data" / "metadata").write_text('{"global_batches": -1}'),
    "missing state folder": lambda d: __import__("shutil").rmtree(d / "state"),
}


@pytest.fixture
def three_checkpoints(model, tmp_path):
  checkpoints, _ = _run(model, tmp_path, "stop", steps=3, every=1)
  checkpoints.close()
  return tmp_path / "checkpoints"


def _restore(model, directory, inputs=None):
  warnings = []
  inputs = inputs or Inputs(model)
  checkpoints = TrainCheckpoints(directory)
  step, state, data = checkpoints.restore_latest(model.abstract_state(), check=resume_check(inputs),
                                                 warn=warnings.append)
  return checkpoints, step, state, inputs, warnings


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(model, three_checkpoints, damage):
  assert _restore(model, three_checkpoints)[1] == 3  # before the damage
  previous, _ = TrainCheckpoints(three_checkpoints).restore(2, model.abstract_state())
  DAMAGE[damage](three_checkpoints / "3")
  checkpoints, step, state, inputs, warnings = _restore(model, three_checkpoints)
  assert step == 2 and inputs.global_batches == 2
  for a, b in zip(_leaves(previous), _leaves(state)):
    np.testing.assert_array_equal(a, b)
  folder = str(three_checkpoints / "3")
  assert len(warnings) == 1 and "\n" not in warnings[0], warnings
  assert warnings[0].startswith(f"WARNING: the checkpoint of step 3 is damaged ({folder}: ")
  assert warnings[0].endswith(f"renamed it {folder}.damaged (kept, not used) and resumed from step 2")
  assert sorted(os.listdir(three_checkpoints)) == ["1", "2", "3.damaged"]
  # training goes on: step 3 is written anew beside the damaged folder, which orbax ignores
  assert checkpoints.all_steps() == [1, 2]
  checkpoints.save(3, state, {"global_batches": 3}, force=True)
  checkpoints.wait()
  assert TrainCheckpoints(three_checkpoints).all_steps() == [1, 2, 3]
  assert sorted(os.listdir(three_checkpoints)) == ["1", "2", "3", "3.damaged"]


@pytest.mark.parametrize("lost", ["_CHECKPOINT_METADATA", "state/ocdbt.process_0/manifest.ocdbt"])
def test_lost_tree_metadata_still_restores_the_newest(model, three_checkpoints, lost):
  # Not needed to restore exactly: orbax's bookkeeping, and the per-process index (merged into the root one).
  _, _, expected, _, _ = _restore(model, three_checkpoints)
  os.remove(three_checkpoints / "3" / lost)
  _, step, state, _, warnings = _restore(model, three_checkpoints)
  assert step == 3 and warnings == [], warnings
  for a, b in zip(_leaves(expected), _leaves(state)):
    np.testing.assert_array_equal(a, b)


def test_non_finite_weights_in_a_checkpoint_are_not_resumed(model, three_checkpoints):
  checkpoints = TrainCheckpoints(three_checkpoints, save_every=1)
  state, _ = checkpoints.restore(3, model.abstract_state())
  poisoned = state.replace(params={**state.params, "b": state.params["b"] * NAN})
  checkpoints.save(4, poisoned, {"clips": {"0": "cG9zaXRpb24gNA=="}})  # as an older kvjax might have
  checkpoints.close()
  _, step, _, _, warnings = _restore(model, three_checkpoints)
  assert step == 3 and len(warnings) == 1 and "4: non-finite values in .params['b']); renamed it" in warnings[0]


def test_an_older_kvjaxs_per_host_reader_state_resumes_at_its_step(model, three_checkpoints):
  checkpoints = TrainCheckpoints(three_checkpoints, save_every=1)
  state, _ = checkpoints.restore(3, model.abstract_state())
  checkpoints.save(4, state.replace(step=state.step + 1), {"clips": {"0": "cG9zaXRpb24gNA=="}})  # grain's, base64
  checkpoints.close()
  _, step, _, inputs, warnings = _restore(model, three_checkpoints)
  assert step == 4 and inputs.global_batches == 4 and warnings == []


def test_no_readable_checkpoint_is_one_clear_error_and_nothing_is_renamed(model, three_checkpoints):
  for step in ("1", "2", "3"):
    _truncate(_largest_array_file(three_checkpoints / step))
  with pytest.raises(CheckpointError) as error:
    _restore(model, three_checkpoints)
  message = str(error.value)
  assert "\n" not in message and len(message) < 2000, message
  assert message.startswith(f"no checkpoint in {three_checkpoints} can be restored (step 3: OUT_OF_RANGE: ")
  assert "; step 2: " in message and "; step 1: " in message and "nothing was renamed or deleted" in message
  assert sorted(os.listdir(three_checkpoints)) == ["1", "2", "3"]


def test_a_damaged_sharded_checkpoint_leaves_no_tracebacks_behind(tmp_path, monkeypatch):
  # orbax reads the shards of an array at once; when one fails, the others finish into a closed event loop and
  # Python printed each as an "Exception ignored" traceback (a flood in `python -m train` on a mesh). Several
  # rounds: whether a read is still in flight when the loop closes is a race. The filter is installed once per
  # process (by the first restore) over the hook of that moment; here it goes over the recorder at once, because
  # the abandoned reads of earlier tests in this process may be collected or finish at any point of this one.
  gc.collect()
  ignored = []
  monkeypatch.setattr("sys.unraisablehook", ignored.append)
  checkpointing._quiet_abandoned_reads()
  mesh = jax.sharding.Mesh(np.array(jax.devices()), ("fsdp",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("fsdp"))
  values = np.random.default_rng(0).normal(size=(4, 8 * len(jax.devices()), 64)).astype(np.float32)  # incompressible
  state = {f"w{i}": jax.device_put(values[i], sharding) for i in range(4)}
  abstract = abstract_with_shardings(jax.eval_shape(lambda: state), jax.tree.map(lambda a: a.sharding, state))
  for round_ in range(4):
    directory = tmp_path / str(round_)
    checkpoints = TrainCheckpoints(directory, save_every=1)
    for step in (1, 2):
      checkpoints.save(step, state, {"step": step})
      checkpoints.wait()
    checkpoints.close()
    _truncate(_largest_array_file(directory / "2"))
    warnings = []
    step, restored, _ = TrainCheckpoints(directory).restore_latest(abstract, warn=warnings.append)
    assert step == 1 and len(warnings) == 1 and restored["w3"].sharding == sharding
  assert ignored == [], [str(u.exc_value)[:200] for u in ignored]


def test_checkpoints_folder_that_is_a_file(tmp_path):
  (tmp_path / "checkpoints").write_text("not a folder")
  with pytest.raises(CheckpointError, match="checkpoints is a file, not a folder of checkpoints"):
    TrainCheckpoints(tmp_path / "checkpoints")


def test_disk_full_while_saving_names_the_step_and_the_last_complete_checkpoint(model, tmp_path, monkeypatch):
  from orbax.checkpoint._src.path import atomicity
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def full_at_step_2(self, *args, **kwargs):
    if os.path.basename(str(self.get_final())) == "2":
      raise OSError(errno.ENOSPC, "No space left on device")
    return await finalize(self, *args, **kwargs)

  monkeypatch.setattr(atomicity.AtomicRenameTemporaryPath, "finalize", full_at_step_2)
  logged = logging.Handler()
  logged.records = []
  logged.emit = logged.records.append
  logging.getLogger().addHandler(logged)
  try:
    with pytest.raises(CheckpointError) as error:
      _run(model, tmp_path, "stop", steps=4, every=1)
  finally:
    logging.getLogger().removeHandler(logged)
  monkeypatch.undo()
  assert str(error.value) == (f"writing the checkpoint of step 2 in {tmp_path / 'checkpoints'} failed ([Errno 28] No "
                              "space left on device); the last complete checkpoint is step 1")
  # that one line is all: orbax's own log of the failure (its traceback, twice) is dropped
  assert [r.getMessage() for r in logged.records if r.exc_info] == []
  checkpoints, step, state, inputs, warnings = _restore(model, tmp_path / "checkpoints")
  assert step == 1 and inputs.global_batches == 1 and warnings == []
  # the half-written step (a .orbax-checkpoint-tmp folder, until orbax cleans it up) is written anew
  checkpoints.save(2, state, {"global_batches": 2}, force=True)
  checkpoints.wait()
  assert TrainCheckpoints(tmp_path / "checkpoints").all_steps() == [1, 2]


def test_metrics_log_drops_a_record_cut_short(tmp_path):
  records = [json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3)]
  (tmp_path / "metrics.jsonl").write_text("".join(records) + '{"step": 4, "lo')
  said = []
  metrics_log(str(tmp_path), 3, said.append).close()
  assert (tmp_path / "metrics.jsonl").read_text() == "".join(records)
  assert said == [f"WARNING: {tmp_path / 'metrics.jsonl'}: dropped 1 unreadable line (a record cut short when a run "
                  "was killed)"]
  metrics_log(str(tmp_path), 2, said.append).close()
  assert (tmp_path / "metrics.jsonl").read_text() == "".join(records[:2]) and len(said) == 1
