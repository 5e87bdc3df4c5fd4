"""Helpers of the `python -m train` tests: running the program (optionally killed mid-save) and reading its
metrics; the kill-and-resume check shared by the UNet and MoVQ recipes."""

import glob
import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMON = ["--steps", "6", "--checkpoint-every", "2", "--batch-size", "4"]
EIGHT_DEVICES = "data=2,fsdp=2,tensor=2"

# Runs the program, but SIGKILLs the process when orbax is about to publish the checkpoint of step 4: its
# files are written, the final rename has not happened (the worst moment to die).
KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    from orbax.checkpoint._src.path import atomicity
    finalize = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize_or_die(self, *args, **kwargs):
      if os.path.basename(str(self.get_final())) == "4":
        os.kill(os.getpid(), signal.SIGKILL)
      return await finalize(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_die
    from train.__main__ import main
    sys.exit(main(sys.argv[1:]))
""")


def run_train(args, env, script=None):
  command = [sys.executable, "-c", script, *args] if script else [sys.executable, "-m", "train", *args]
  return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)


def read_metrics(workdir):
  with open(workdir / "metrics.jsonl") as f:
    return [json.loads(line) for line in f]



def tensorboard_points(workdir):
  """{tag: {step: value}} as TensorBoard shows the workdir's event files (read in the order they were
  written): a file's purge marker (SessionLog.START at step S) drops the earlier files' points from S on."""
  from kvjax.training.watch import read_events
  points = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")), key=os.path.getmtime):
    for event in read_events(path):
      if event.HasField("session_log") and event.session_log.status == event.session_log.START:
        points = {tag: {s: v for s, v in by_step.items() if s < event.step} for tag, by_step in points.items()}
      for value in event.summary.value:
        kind = value.WhichOneof("value")
        points.setdefault(value.tag, {})[event.step] = value.simple_value if kind == "simple_value" else value.image
  return points


def killed_mid_save_resumes_on_the_same_loss_curve(run_args, dataset, env, workdir, mesh=EIGHT_DEVICES, devices=8,
                                                   resumed_args=()):
  """The README command on `devices` simulated devices, killed while publishing the checkpoint of step 4
  (saves are asynchronous: training may have gone on meanwhile and logged steps after 4). Run again (with
  `resumed_args` added), it restores step 2 and must recompute every logged step exactly, then go on to 6;
  TensorBoard shows each step once, with the values of metrics.jsonl. Returns the metrics."""
  args = run_args + COMMON + ["--mesh", mesh, "--data", str(dataset), "--workdir", str(workdir)]
  env = {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  killed = run_train(args, env, script=KILL_DURING_SAVE)
  assert killed.returncode == -9, killed.stderr[-3000:]
  before = read_metrics(workdir)
  assert [m["step"] for m in before] == list(range(1, len(before) + 1)) and len(before) >= 4
  assert all(m["loss"] > 0 and m["grad_norm"] > 0 for m in before)
  saved = sorted(os.listdir(workdir / "checkpoints"))
  assert "2" in saved and "4" not in saved and any("tmp" in name for name in saved), saved

  resumed = run_train([*args, *resumed_args], env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert "resumed from step 2" in resumed.stderr
  after = read_metrics(workdir)
  assert [m["step"] for m in after] == [1, 2, 3, 4, 5, 6]
  for a, b in zip(after, before):  # same data position, same randomness, same arithmetic
    assert a == {**b, "seconds": a["seconds"]}
  assert len({m["loss"] for m in after}) == 6
  assert sorted(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == [2, 4, 6]
  # TensorBoard: the killed run's points past step 2 are purged by the resumed run's file, which logs them again
  points = tensorboard_points(workdir)
  for name in ("loss", "grad_norm", "learning_rate"):
    assert points[f"train/{name}"] == {m["step"]: pytest.approx(m[name], rel=1e-6, abs=1e-12) for m in after}, name
  assert sorted(points["perf/clips_per_second"]) == sorted(points["perf/step_seconds"]) == [1, 2, 3, 4, 5, 6]
  assert all(v > 0 for v in points["perf/clips_per_second"].values())
  return after
