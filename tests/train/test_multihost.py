"""python -m train on two processes (jax.distributed, CPU collectives over gloo on 127.0.0.1, 4 simulated
devices each) over a prepared dataset: the global batch of every step is the one-process run's, each host
reading only the rows its devices hold, so the logged losses are the same."""

import socket
import subprocess
import sys

from train_testing_utils import REPO, read_metrics, run_train

RUN = ["--config", "keyframe-tiny-two-level", "--mesh", "data=2,fsdp=2,tensor=2", "--steps", "2",
       "--batch-size", "4"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_train_on_the_one_process_batches(dataset, env, tmp_path):
  args = RUN + ["--data", str(dataset)]
  two_env = {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo"}
  coordinator = f"127.0.0.1:{_free_port()}"
  processes = [subprocess.Popen([sys.executable, "-m", "train", *args, "--workdir", str(tmp_path / "two"),
                                 "--coordinator", coordinator, "--num-processes", "2", "--process-id", str(i)],
                                env=two_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for i in range(2)]
  outputs = [p.communicate(timeout=900) for p in processes]
  for p, (_, err) in zip(processes, outputs):
    assert p.returncode == 0, err[-3000:]
  one = run_train(args + ["--workdir", str(tmp_path / "one")],
                  {**env, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert one.returncode == 0, one.stderr[-3000:]
  losses = lambda run: [round(m["loss"], 5) for m in read_metrics(tmp_path / run)]
  assert len(losses("one")) == 2 and losses("two") == losses("one")
