"""python -m train on simulated devices over a prepared dataset: a run killed in the middle of writing a
checkpoint resumes from the last complete one and continues the same loss curve; bad settings are named.
(The MoVQ recipe's run, export and sampling: test_train_movq_cli.py.)"""

import os
import subprocess
import sys

import textwrap

from train_testing_utils import COMMON, REPO, killed_mid_save_resumes_on_the_same_loss_curve, read_metrics as _metrics
from train_testing_utils import run_train as _train

# The kill test's settings: the reliability test below reuses its compiled step (the persistent cache).
KEYFRAME_RUN = ["--config", "keyframe-tiny", "--mesh", "fsdp=2"]
TWO_DEVICES = "--xla_force_host_platform_device_count=2"

NAN_AT_STEP_5 = textwrap.dedent("""
    import sys
    import kvjax.training.inputs as inputs
    make = inputs.step_inputs
    def poisoned(*args, **kwargs):
      real = make(*args, **kwargs)
      next_batch = real.next_batch
      def next_batch_with_nan(step):
        batch = next_batch(step)
        return {**batch, "latents": batch["latents"] * float("nan")} if step == 4 else batch
      real.next_batch = next_batch_with_nan
      return real
    inputs.step_inputs = poisoned
    from train.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")



def _largest_file(folder):
  files = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  return max(files, key=os.path.getsize)


def test_killed_mid_save_resumes_on_the_same_loss_curve(dataset, env, tmp_path):
  # Two devices, FSDP: the checkpoint is sharded; the GAN run's kill test uses the 8-device mesh, and the
  # sharded steps' equality with one device is tested in-process (compiling 8-way costs minutes here).
  killed_mid_save_resumes_on_the_same_loss_curve(KEYFRAME_RUN[:2], dataset, env, tmp_path / "run",
                                                 mesh=KEYFRAME_RUN[3], devices=2)


def test_nan_stops_the_run_and_a_damaged_checkpoint_is_survived(dataset, env, tmp_path):
  # A NaN batch at step 5 stops the run naming the step, with no checkpoint after it; a damaged newest
  # checkpoint and a metrics record cut short are then survived: the run resumes from the checkpoint before
  # it (named, renamed aside) and recomputes the same loss curve.
  env = {**env, "XLA_FLAGS": TWO_DEVICES}
  workdir = tmp_path / "run"
  args = KEYFRAME_RUN + COMMON + ["--data", str(dataset), "--workdir", str(workdir)]
  stopped = _train(args, env, script=NAN_AT_STEP_5)
  last_line = stopped.stderr.strip().splitlines()[-1]
  assert stopped.returncode == 1, stopped.stderr[-3000:]
  assert last_line == ("error: step 5: the loss is NaN (grad norm NaN); stopped before updating; the last checkpoint "
                       "(step 4) holds finite weights; run the same command with --nonfinite skip to skip such steps "
                       "instead"), stopped.stderr[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  before = _metrics(workdir)
  assert [m["step"] for m in before] == [1, 2, 3, 4]

  # Damage the newest checkpoint (an array file cut in half) and cut the metrics log's last record short.
  damaged = _largest_file(workdir / "checkpoints" / "4" / "state")
  with open(damaged, "r+b") as f:
    f.truncate(os.path.getsize(damaged) // 2)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 5, "loss": 0.1')

  # The non-finite policy may change between runs of a workdir (the same compiled step).
  resumed = _train(args + ["--steps", "5", "--nonfinite", "skip"], env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  folder = workdir / "checkpoints" / "4"
  warning = next(line for line in resumed.stderr.splitlines() if "is damaged" in line)
  assert warning.startswith(f"WARNING: the checkpoint of step 4 is damaged ({folder}: "), warning
  assert warning.endswith(f"renamed it {folder}.damaged (kept, not used) and resumed from step 2"), warning
  assert "resumed from step 2" in resumed.stderr and "dropped 1 unreadable line" in resumed.stderr
  assert "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
  after = _metrics(workdir)
  assert [m["step"] for m in after] == [1, 2, 3, 4, 5] and all(m["skipped_steps"] == 0 for m in after[2:])
  assert after[:2] == before[:2]
  assert after[2:4] == [{**b, "seconds": a["seconds"], "skipped_steps": 0} for a, b in zip(after[2:4], before[2:4])]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4", "4.damaged", "5"]


def test_other_settings_in_the_same_workdir_are_refused(tmp_path, env):
  first = _train(["--config", "keyframe-tiny", "--workdir", str(tmp_path), "--steps", "0"], env)
  assert first.returncode == 0, first.stderr[-3000:]
  second = _train(["--config", "keyframe-tiny", "--workdir", str(tmp_path), "--steps", "0", "--seed", "5"], env)
  assert second.returncode != 0 and "other settings (seed)" in second.stderr


def test_missing_dataset_is_named(tmp_path, env):
  result = _train(["--config", "keyframe-tiny", "--workdir", str(tmp_path), "--data", str(tmp_path / "nope")], env)
  assert result.returncode != 0 and "no such folder" in result.stderr


def test_precomputed_inputs_train_the_interpolation_unet(dataset, env, tmp_path):
  # Encoders run once (python -m train.precompute); training then reads latents and context, not frames.
  inputs = tmp_path / "inputs"
  made = subprocess.run([sys.executable, "-m", "train.precompute", "--config", "interpolation-tiny", "--data",
                         str(dataset), "--out", str(inputs), "--batch-size", "2"],
                        env={**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}, cwd=REPO,
                        capture_output=True, text=True, timeout=900)
  assert made.returncode == 0, made.stderr[-3000:]
  assert "4 clips encoded" in made.stderr and not any(n.startswith(".") for n in os.listdir(tmp_path))
  # One device (sharded steps are tested elsewhere; this is about the inputs): a quarter of the compile.
  args = ["--config", "interpolation-tiny", "--steps", "2", "--batch-size", "4",
          "--data", str(inputs), "--workdir", str(tmp_path / "run")]
  trained = _train(args, {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"})
  assert trained.returncode == 0, trained.stderr[-3000:]
  assert [m["step"] for m in _metrics(tmp_path / "run")] == [1, 2]
  other = _train(["--config", "keyframe-tiny", "--steps", "1", "--data", str(inputs), "--workdir",
                  str(tmp_path / "other")], env)
  assert other.returncode != 0 and "made for other settings" in other.stderr
