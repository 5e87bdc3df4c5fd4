"""Format detection: PyTorch zip archives (`.pt`, `.bin`) and safetensors files."""

from __future__ import annotations

import os
import stat
import zipfile
from typing import Any

from kvjax.checkpoints.lazy import CheckpointError
from kvjax.checkpoints.safetensors_file import read_safetensors
from kvjax.checkpoints.torch_zip import read_torch_zip


def read_checkpoint(path: str | os.PathLike) -> Any:
  """Reads the structure of a checkpoint with every tensor left on disk as a `LazyTensor`.

  PyTorch files must be in the zip format that `torch.save` has written since 1.6; their pickle is read by
  a restricted unpickler that admits only tensor rebuilding and plain containers. Nothing in the file is
  ever executed. `path` must be a regular file; a symbolic link is followed (the Hugging Face cache links
  its snapshots to blobs), but a FIFO, a device or a socket is refused before it is opened.
  """
  path = os.fspath(path)
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    suffix = " (a dangling symbolic link)" if os.path.islink(path) else ""
    raise CheckpointError(f"{path}: no such file{suffix}") from None
  except OSError as e:
    raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
  if stat.S_ISDIR(mode):
    raise CheckpointError(f"{path}: is a directory, expected a checkpoint file")
  if not stat.S_ISREG(mode):
    raise CheckpointError(f"{path}: not a regular file (a device, FIFO or socket), expected a checkpoint file")
  try:
    with open(path, "rb") as f:
      head = f.read(16)
    is_zip = zipfile.is_zipfile(path)
  except OSError as e:
    raise CheckpointError(f"{path}: cannot be read: {e.strerror or e}") from None
  if is_zip:
    return read_torch_zip(path)
  if head[:2] == b"PK":
    raise CheckpointError(f"{path}: truncated or corrupt zip archive (no readable central directory)")
  if head[:1] == b"\x80" or head[:1] in (b"c", b"("):
    raise CheckpointError(
        f"{path}: a bare pickle (legacy torch.save format, before PyTorch 1.6): refused, since such files can "
        "run arbitrary code when loaded. Re-save it with a current PyTorch (torch.save(torch.load(...)))")
  if len(head) >= 9 and head[8:9] == b"{":
    return read_safetensors(path)
  raise CheckpointError(f"{path}: not a PyTorch zip checkpoint nor a safetensors file")
