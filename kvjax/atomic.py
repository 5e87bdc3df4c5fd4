"""Outputs that appear whole or not at all: build in a hidden staging path, then rename into place.

A staging is named `.NAME.partial-<host>-<pid>-<random>` beside the output NAME (<host>: a short hash of the
machine's name, <pid>: the process writing it). A process killed outright (SIGKILL, a crash, a power cut)
cannot remove its staging, so every later `staged` call for an output first removes the stagings of that
output whose process is gone (the same machine, a pid no longer alive), and says so in one line on stderr;
`remove_leftovers(folder)` does the same for every output of a folder. A live process's staging, one made
on another machine and one of an older kvjax (no pid in its name) are left alone (the last two are named).

Paths that cannot be written (a read-only folder, a parent that is a file, a full disk) raise OutputError,
whose message names the output: an OSError and a ValueError, so every CLI prints it as one `error: ...` line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import shutil
import socket
import sys
import uuid
from typing import Iterator

STAGING_MARK = ".partial-"
# .NAME.partial-<host>-<pid>-<random>; older kvjax wrote .NAME.partial-<random> (8 hex digits, no owner).
_STAGING = re.compile(r"^\.(?P<name>.+)\.partial-(?:(?P<host>[0-9a-f]{6})-(?P<pid>\d{1,12})-)?[0-9a-f]{8}$")


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # whatever was being written, the output cannot be


class OutputError(OSError, ValueError):
  """An output that cannot be written; the message names it and the reason."""


def check_free(path: str, overwrite: bool) -> str:
  path = os.path.abspath(os.fspath(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
  return path


def _reason(e: OSError) -> str:
  return e.strerror or str(e) or type(e).__name__


def check_writable(folder: str | os.PathLike) -> str:
  """Raises OutputError unless files can be made in `folder` (created with its parents if missing): the
  nearest existing folder on the way must be a folder and writable. Returns the absolute path."""
  folder = os.path.abspath(os.fspath(folder))
  existing = folder
  while not os.path.lexists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise OutputError(f"{existing} is a file, not a folder: cannot write {folder}" if existing != folder
                      else f"{folder} is a file, not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise OutputError(f"cannot write in {existing}: permission denied" if existing == folder else
                      f"cannot create {folder}: {existing} is not writable (permission denied)")
  return folder


def _host_tag() -> str:
  return hashlib.sha1(socket.gethostname().encode("utf-8", "replace")).hexdigest()[:6]


def staging_path(path: str) -> str:
  """A fresh staging name beside `path` (absolute), owned by this process."""
  parent, name = os.path.split(path)
  return os.path.join(parent, f".{name}{STAGING_MARK}{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
  if pid <= 0:
    return False  # never signal a process group
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # another user's live process
  except (OverflowError, ValueError, OSError):
    return False  # no such pid can exist
  return True


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  else:
    os.remove(path)


def _leftovers(folder: str, name: str | None) -> tuple[list[tuple[str, int]], list[str]]:
  """([(dead process's staging, pid)], [stagings kept although their owner is unknown]) in `folder`, of the
  output `name` (every output when None)."""
  try:
    entries = os.listdir(folder)
  except OSError:
    return [], []
  host = _host_tag()
  dead, unknown = [], []
  for entry in sorted(entries):
    if STAGING_MARK not in entry:
      continue
    match = _STAGING.match(entry)
    if match is None or (name is not None and match["name"] != name):
      continue
    if match["pid"] is None or match["host"] != host:
      unknown.append(entry)
    elif not _alive(int(match["pid"])):
      dead.append((os.path.join(folder, entry), int(match["pid"])))
  return dead, unknown


def remove_leftovers(folder: str | os.PathLike, name: str | None = None, *, quiet: bool = False) -> list[str]:
  """Removes the stagings in `folder` (of the output `name`, or of every output) left by processes that are
  gone; returns them, and unless `quiet` says so in one line on stderr (with those it left alone)."""
  folder = os.path.abspath(os.fspath(folder))
  dead, unknown = _leftovers(folder, name)
  removed, failed = [], []
  for staging, _ in dead:
    try:
      _remove(staging)
      removed.append(staging)
    except OSError as e:
      failed.append(f"{os.path.basename(staging)} ({_reason(e)})")
  if not quiet and (dead or unknown):
    what = os.path.join(folder, name) if name else folder
    parts = []
    if removed:
      pids = ", ".join(sorted({str(pid) for staging, pid in dead if staging in removed}, key=int))
      parts.append(f"removed {len(removed)} leftover staging{'s' * (len(removed) > 1)} of {what} from "
                   f"killed runs (pid {pids})")
    if failed:
      parts.append(f"could not remove {', '.join(failed)}")
    if unknown:
      parts.append(f"left alone {', '.join(unknown)} (made by another machine or an older kvjax; delete it "
                   "if no run is writing there)")
    print(f"note: {'; '.join(parts)}", file=sys.stderr)
  return removed


def _make_parent(parent: str) -> None:
  try:
    os.makedirs(parent, exist_ok=True)
  except OSError as e:
    check_writable(parent)  # the clearer message, when it explains the failure
    raise OutputError(f"cannot create the folder {parent}: {_reason(e)}") from None


def _create(staging: str, path: str, folder: bool) -> None:
  """Makes the staging folder, or checks that the staging file can be made (and leaves its name free)."""
  try:
    if folder:
      os.mkdir(staging)
    else:
      os.close(os.open(staging, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
      os.remove(staging)
  except OSError as e:
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
      raise OutputError(f"cannot write {path}: {os.path.dirname(path)} is not writable ({_reason(e)})") from None
    raise OutputError(f"cannot write {path}: {_reason(e)}") from None


def _replace(staging: str, path: str) -> None:
  """Moves the finished staging to `path`, replacing what is there; a kill in between leaves at most stagings
  (the old output set aside under a staging name), never a half-removed output."""
  try:
    if not os.path.lexists(path):
      os.rename(staging, path)
    elif not os.path.isdir(staging) and (os.path.islink(path) or not os.path.isdir(path)):
      os.replace(staging, path)  # a file over a file: atomic
    else:
      aside = staging_path(path)
      os.rename(path, aside)
      os.rename(staging, path)
      _remove(aside)
  except OSError as e:
    raise OutputError(f"cannot replace {path}: {_reason(e)}") from None


def _under(filename, staging: str) -> bool:
  if not isinstance(filename, (str, bytes, os.PathLike)):
    return False
  filename = os.path.abspath(os.fsdecode(filename))
  return filename == staging or filename.startswith(staging + os.sep)


@contextlib.contextmanager
def staged(path: str | os.PathLike, *, overwrite: bool = False, folder: bool = True) -> Iterator[str]:
  """Yields a staging path beside `path` (a created folder, or a free file name); when the block ends
  without an error it replaces `path`, otherwise it is removed and `path` is left untouched.

  Before staging, the leftovers of earlier runs that were killed while writing `path` are removed (one line
  on stderr). An output that cannot be written (read-only folder, parent a file, disk full while writing the
  staging) raises OutputError naming `path`."""
  path = check_free(path, overwrite)
  parent = os.path.dirname(path)
  _make_parent(parent)
  remove_leftovers(parent, os.path.basename(path))
  staging = staging_path(path)
  _create(staging, path, folder)
  try:
    try:
      yield staging
    except OSError as e:
      ours = _under(e.filename, staging) or _under(e.filename2, staging) or e.errno in _FULL
      if isinstance(e, OutputError) or not ours:
        raise
      raise OutputError(f"cannot write {path}: {_reason(e)}") from e
    _replace(staging, path)
  except BaseException:
    if os.path.lexists(staging):
      try:
        _remove(staging)
      except OSError:
        pass  # the next run removes it
    raise


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
  """Within the block, SIGTERM (a plain `kill`, a job scheduler's stop) raises SystemExit(143) in the main
  thread, so that it unwinds like Ctrl-C and every open staging is removed; the old handler comes back after.
  Elsewhere than the main thread it does nothing (signal handlers belong to the main thread)."""
  import signal
  import threading
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  def terminate(signum, frame):
    raise SystemExit(128 + signum)

  previous = signal.signal(signal.SIGTERM, terminate)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
