"""A bounded queue of jobs run one at a time by one worker thread, with each job's progress and an estimate
of the wait: what lets one pipeline serve every visitor of the app without a second copy of its weights.

Each job has a random, unguessable id (128 bits) and a private folder inside the queue's own (a temporary
folder of mode 0700, removed by `close`); only the holder of the id can read the job's status and files, and
nothing lists the jobs. Finished jobs are kept up to `keep`, the oldest (and its folder) forgotten first.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import secrets
import shutil
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
RECENT = 8  # the wait is estimated from this many of the latest jobs' durations


class Busy(Exception):
  """The queue holds as many waiting jobs as it takes; the message says so and how long to wait."""


class JobError(Exception):
  """A job's failure that its visitor may read (a bad option found late, say); other errors are logged and the
  visitor is told only that the job failed."""


@dataclasses.dataclass
class Job:
  id: str
  request: Any
  folder: str
  plan: Sequence[str] = ()  # the stages it will run, in order, as progress names them
  state: str = QUEUED
  submitted: float = 0.0
  started: float | None = None
  finished: float | None = None
  stages: dict[str, float] = dataclasses.field(default_factory=dict)  # finished stage -> seconds
  step: tuple[str, int, int] | None = None  # (stage, done, total) of the running denoising stage
  outputs: list[str] = dataclasses.field(default_factory=list)  # file names in `folder`
  error: str | None = None


class JobQueue:
  """`submit(request)` queues a job for `work(job, progress, step_progress) -> [file names in job.folder]`,
  called in the worker thread; at most `max_waiting` jobs wait beside the running one (Busy beyond that).
  `progress(stage, seconds)` and `step_progress(stage, done, total)` are the pipeline's callbacks, recorded as
  the running job's."""

  def __init__(self, work: Callable, max_waiting: int = 4, keep: int = 32, clock: Callable[[], float] = time.monotonic):
    if max_waiting < 0 or keep < 1:
      raise ValueError(f"max_waiting must be >= 0 and keep >= 1, got {max_waiting} and {keep}")
    self._work, self.max_waiting, self._keep, self._clock = work, max_waiting, keep, clock
    self._folder = tempfile.mkdtemp(prefix="kvjax-app-")  # mode 0700: this user's only
    self._lock = threading.Condition()
    self._waiting: collections.deque[Job] = collections.deque()
    self._running: Job | None = None
    self._jobs: dict[str, Job] = {}
    self._finished: collections.deque[str] = collections.deque()
    self._durations: collections.deque[float] = collections.deque(maxlen=RECENT)
    self._closed = False
    self._thread = threading.Thread(target=self._serve, name="kvjax-app-worker", daemon=True)
    self._thread.start()

  @property
  def folder(self) -> str:
    return self._folder

  def scratch(self) -> str:
    """A new private folder inside the queue's, for a request's uploads; the caller removes it."""
    return tempfile.mkdtemp(dir=self._folder, prefix="upload-")

  # --- submitting and reading -------------------------------------------------------------------------

  def submit(self, request: Any, plan: Sequence[str] = ()) -> Job:
    with self._lock:
      if self._closed:
        raise Busy("the server is shutting down")
      if len(self._waiting) >= self.max_waiting:
        ahead = len(self._waiting) + (self._running is not None)
        wait = self._estimate(ahead)
        about = f"; try again in about {wait:.0f} s" if wait is not None else "; try again in a few minutes"
        raise Busy(f"busy: {'1 video is' if ahead == 1 else f'{ahead} videos are'} ahead of you, the most this "
                   f"server queues{about}")
      job_id = secrets.token_urlsafe(16)
      folder = os.path.join(self._folder, job_id)
      os.mkdir(folder, 0o700)
      job = Job(job_id, request, folder, tuple(plan), submitted=self._clock())
      self._jobs[job_id] = job
      self._waiting.append(job)
      self._lock.notify_all()
      return job

  def status(self, job_id: str) -> dict | None:
    """The job's state as the page shows it, or None for an unknown (or forgotten) id."""
    with self._lock:
      job = self._jobs.get(job_id)
      if job is None:
        return None
      now = self._clock()
      out = {"id": job.id, "state": job.state, "plan": list(job.plan), "stages": dict(job.stages),
             "step": None if job.step is None else dict(zip(("stage", "done", "total"), job.step)),
             "error": job.error, "outputs": list(job.outputs) if job.state == DONE else []}
      if job.state == QUEUED:
        ahead = self._waiting.index(job) + (self._running is not None)
        out.update(ahead=ahead, wait_s=self._estimate(ahead))
      if job.started is not None:
        out["elapsed_s"] = (job.finished or now) - job.started
      return out

  def job(self, job_id: str) -> Job | None:
    with self._lock:
      return self._jobs.get(job_id)

  def output(self, job_id: str, name: str) -> str | None:
    """The path of a finished job's output `name`, or None (unknown id, unfinished job, a name it did not
    make: no other file of the folder is ever served)."""
    with self._lock:
      job = self._jobs.get(job_id)
      if job is None or job.state != DONE or name not in job.outputs:
        return None
      return os.path.join(job.folder, name)

  def _estimate(self, ahead: int) -> float | None:
    """Seconds until a job with `ahead` jobs before it starts: the running job's remaining time plus the
    others', each the mean of the latest durations; None before any job has finished."""
    if not self._durations:
      return None
    mean = sum(self._durations) / len(self._durations)
    running = 0.0
    if self._running is not None and ahead:
      running = max(mean - (self._clock() - self._running.started), 0.0)
      ahead -= 1
    return running + ahead * mean

  # --- the worker -------------------------------------------------------------------------------------

  def _serve(self) -> None:
    while True:
      with self._lock:
        while not self._waiting and not self._closed:
          self._lock.wait()
        if self._closed:
          return
        job = self._running = self._waiting.popleft()
        job.state, job.started = RUNNING, self._clock()
      try:
        outputs = self._work(job, lambda stage, seconds: self._stage_done(job, stage, seconds),
                             lambda stage, done, total: self._step(job, stage, done, total))
        state, error = DONE, None
      except JobError as e:
        outputs, state, error = [], FAILED, str(e)
      except Exception:  # the page gets no traceback: the server's log does
        log.exception("job %s failed", job.id)
        outputs, state, error = [], FAILED, "the server failed to make this video (its log says why)"
      with self._lock:
        job.state, job.error, job.outputs, job.step = state, error, list(outputs), None
        job.finished = self._clock()
        if state == DONE:
          self._durations.append(job.finished - job.started)
        self._running = None
        self._finished.append(job.id)
        while len(self._finished) > self._keep:
          old = self._jobs.pop(self._finished.popleft())
          shutil.rmtree(old.folder, ignore_errors=True)

  def _stage_done(self, job: Job, stage: str, seconds: float) -> None:
    with self._lock:
      job.stages[stage] = seconds
      job.step = None

  def _step(self, job: Job, stage: str, done: int, total: int) -> None:
    with self._lock:
      job.step = (stage, int(done), int(total))

  def close(self, timeout: float | None = None) -> None:
    """Stops taking jobs, lets the running one end (waiting ones are dropped) and removes every file."""
    with self._lock:
      self._closed = True
      self._waiting.clear()
      self._lock.notify_all()
    self._thread.join(timeout)
    shutil.rmtree(self._folder, ignore_errors=True)

  def __enter__(self) -> "JobQueue":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
