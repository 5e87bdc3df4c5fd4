"""python -m train on two processes (jax.distributed, CPU collectives over gloo on 127.0.0.1, one simulated
device each, the weights and the batch sharded over both: fsdp=2) over a prepared dataset: a step's global
batch is the same in two processes as in one, each host reading only the rows its device holds, so the logged
losses are the same; and the two processes' checkpoint resumes in one process of 2 devices on the same loss
curve (a data position is a count of global batches, whatever the number of hosts)."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from train_testing_utils import REPO, read_metrics, run_train

# One device a host and a one-process resume on 2 devices: the cheapest mesh that splits the weights and the
# batch over the hosts, which is what counts here (every mesh axis on 8 devices is the sharded-step tests'
# matter: tests/kvjax/test_training.py). Where test_train_cli.py's kill-and-resume runs train this same program
# (config, mesh, batch, devices), the suite's persistent compilation cache holds the resume's step.
RUN = ["--config", "keyframe-tiny-two-level", "--mesh", "fsdp=2", "--batch-size", "4"]
ONE_HOST_DEVICES = 2


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(args, env) -> None:
  """`python -m train ARGS` as processes 0 and 1 of a 2-process run (1 device each); both must succeed."""
  two_env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  coordinator = f"127.0.0.1:{_free_port()}"
  processes = [subprocess.Popen([sys.executable, "-m", "train", *args, "--coordinator", coordinator,
                                 "--num-processes", "2", "--process-id", str(i)],
                                env=two_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  return outputs[0][1]


def _losses(workdir):
  return [round(m["loss"], 5) for m in read_metrics(workdir)]


def test_two_processes_train_on_the_one_process_batches(dataset, env, tmp_path):
  # Two processes train three steps, saving at steps 2 and 3 (a checkpoint written by two hosts); one process
  # of 2 devices then resumes their step-2 checkpoint and takes step 3 again: the same loss, so the same global
  # batch at the same position and the same weights, whatever the number of hosts. Three training processes:
  # a run from step 0 in one process, or a second resume in two, would each add a compile of the step (about a
  # minute of the suite apiece) for what step 3 already shows.
  args = RUN + ["--data", str(dataset), "--steps", "3", "--checkpoint-every", "2"]
  _two_processes(args + ["--workdir", str(tmp_path / "two")], env)
  two = _losses(tmp_path / "two")
  assert len(two) == 3 and sorted(os.listdir(tmp_path / "two" / "checkpoints")) == ["2", "3"]
  shutil.copytree(tmp_path / "two", tmp_path / "one")
  shutil.rmtree(tmp_path / "one" / "checkpoints" / "3")
  resumed = run_train(args + ["--workdir", str(tmp_path / "one")],
                      {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={ONE_HOST_DEVICES}"})
  assert resumed.returncode == 0 and "resumed from step 2" in resumed.stderr, resumed.stderr[-3000:]
  assert _losses(tmp_path / "one") == two


@pytest.mark.slow
def test_synthetic_batches_do_not_depend_on_the_process_count(env, tmp_path):
  """`--data synthetic` draws each global batch whole from the step (not per shard): the same examples on 2
  processes as on 1. Slow (three more training processes, about 4 minutes): the reader's promise is kept by
  tests/kvjax/test_training_inputs.py::test_generated_clips_do_not_depend_on_the_host_count, and the
  processes' by the prepared-data test above."""
  args = RUN + ["--data", "synthetic", "--steps", "2"]
  _two_processes(args + ["--workdir", str(tmp_path / "two")], env)
  one = run_train(args + ["--workdir", str(tmp_path / "one")],
                  {**env, "XLA_FLAGS": f"--xla_force_host_platform_device_count={ONE_HOST_DEVICES}"})
  assert one.returncode == 0, one.stderr[-3000:]
  assert len(_losses(tmp_path / "one")) == 2 and _losses(tmp_path / "two") == _losses(tmp_path / "one")


def test_when_a_process_dies_the_other_stops_in_bounded_time(env, tmp_path):
  """Process 1 is killed while both are setting up; process 0 must not wait in a collective for ever."""
  two_env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=1", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  coordinator = f"127.0.0.1:{_free_port()}"
  processes = [subprocess.Popen([sys.executable, "-m", "train", *RUN, "--data", "synthetic", "--steps", "2",
                                 "--workdir", str(tmp_path / "run"), "--coordinator", coordinator, "--num-processes",
                                 "2", "--process-id", str(i), "--peer-timeout", "5"],
                                env=two_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  time.sleep(15)  # past jax.distributed.initialize (a few seconds), into building the models or compiling
  os.kill(processes[1].pid, signal.SIGKILL)
  killed = time.monotonic()
  _, err = processes[0].communicate(timeout=120)
  processes[1].wait()
  assert processes[0].returncode != 0 and time.monotonic() - killed < 60, err[-2000:]
  assert "another task died" in err or "unhealthy" in err, err[-2000:]
