"""python -m train end to end on one device: a NaN batch at step 3 stops the run naming the step, with no
checkpoint after it; a damaged newest checkpoint and a metrics record cut short are then survived: the run
resumes from the checkpoint before it (named, renamed aside) and recomputes the same loss curve. Two runs,
one compile (the second reads the first's persistent compilation cache)."""

import os
import textwrap

from train_testing_utils import read_metrics, run_train

# The real program, with the third step's latents (an encoded batch) poisoned with NaN.
NAN_AT_STEP_3 = textwrap.dedent("""
    import sys
    import kvjax.training.inputs as inputs
    make = inputs.step_inputs
    def poisoned(*args, **kwargs):
      real = make(*args, **kwargs)
      next_batch = real.next_batch
      def next_batch_with_nan(step):
        batch = next_batch(step)
        return {**batch, "latents": batch["latents"] * float("nan")} if step == 2 else batch
      real.next_batch = next_batch_with_nan
      return real
    inputs.step_inputs = poisoned
    from train.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def _largest_file(folder):
  files = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
  return max(files, key=os.path.getsize)


def test_nan_stops_the_run_and_a_damaged_checkpoint_is_survived(env, tmp_path):
  env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  workdir = tmp_path / "run"
  args = ["--config", "keyframe-tiny", "--batch-size", "2", "--resolution", "32x32", "--num-frames", "1",
          "--mesh", "", "--checkpoint-every", "1", "--data", "synthetic", "--workdir", str(workdir)]
  stopped = run_train(args + ["--steps", "4"], env, script=NAN_AT_STEP_3)
  last_line = stopped.stderr.strip().splitlines()[-1]
  assert stopped.returncode == 1, stopped.stderr[-3000:]
  assert last_line == ("error: step 3: the loss is NaN (grad norm NaN); stopped before updating; the last checkpoint "
                       "(step 2) holds finite weights; run the same command with --nonfinite skip to skip such steps "
                       "instead"), stopped.stderr[-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2"]
  before = read_metrics(workdir)
  assert [m["step"] for m in before] == [1, 2]

  # Damage the newest checkpoint (an array file cut in half) and cut the metrics log's last record short.
  damaged = _largest_file(workdir / "checkpoints" / "2" / "state")
  with open(damaged, "r+b") as f:
    f.truncate(os.path.getsize(damaged) // 2)
  with open(workdir / "metrics.jsonl", "a") as f:
    f.write('{"step": 3, "loss": 0.1')

  # The non-finite policy may change between runs of a workdir (the same compiled step).
  resumed = run_train(args + ["--steps", "3", "--nonfinite", "skip"], env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  folder = workdir / "checkpoints" / "2"
  warning = next(line for line in resumed.stderr.splitlines() if "is damaged" in line)
  assert warning.startswith(f"WARNING: the checkpoint of step 2 is damaged ({folder}: "), warning
  assert warning.endswith(f"renamed it {folder}.damaged (kept, not used) and resumed from step 1"), warning
  assert "resumed from step 1" in resumed.stderr and "dropped 1 unreadable line" in resumed.stderr
  assert "Traceback" not in resumed.stderr, resumed.stderr[-3000:]
  after = read_metrics(workdir)
  assert [m["step"] for m in after] == [1, 2, 3] and all(m["skipped_steps"] == 0 for m in after[1:])
  assert after[:2] == [before[0], {**before[1], "seconds": after[1]["seconds"], "skipped_steps": 0}]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["1", "2", "2.damaged", "3"]
