"""Captions from a user-supplied JSON-lines file (written by a captioning model that runs elsewhere): each line
maps a clip id or a source path to a caption. A clip without an entry falls back to its source's own
caption, which is also kept in a field of its own."""

from __future__ import annotations

import json
import os

KEY_FIELDS = ("clip_id", "id", "source", "path")


class CaptionsError(ValueError):
  """A captions file that cannot be used; the message names the file and line."""


def load_captions(path: str) -> dict[str, str]:
  """{key: caption} from lines like {"clip_id": "...", "caption": "..."}, {"source": "a/b.mp4",
  "caption": "..."} or {"<key>": "<caption>"}. Blank lines are skipped; anything else is a CaptionsError."""
  if not os.path.isfile(path):
    raise CaptionsError(f"captions file {path} does not exist")
  captions = {}
  try:
    with open(path, encoding="utf-8") as f:
      lines = list(f)
  except (OSError, UnicodeDecodeError) as e:
    raise CaptionsError(f"captions file {path} cannot be read: {e}") from e
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      entry = json.loads(line)
    except json.JSONDecodeError as e:
      raise CaptionsError(f"{path}:{number}: not JSON ({e.msg})") from e
    if not isinstance(entry, dict):
      raise CaptionsError(f"{path}:{number}: expected an object, got {type(entry).__name__}")
    if "caption" in entry:
      key = next((entry[field] for field in KEY_FIELDS if field in entry), None)
      caption = entry["caption"]
      if key is None:
        raise CaptionsError(f"{path}:{number}: no key: give one of {', '.join(KEY_FIELDS)}")
    elif len(entry) == 1:
      (key, caption), = entry.items()
    else:
      raise CaptionsError(f"{path}:{number}: expected {{\"clip_id\" or \"source\": ..., \"caption\": ...}} "
                          "or {\"<key>\": \"<caption>\"}")
    if not isinstance(key, str) or not isinstance(caption, str):
      raise CaptionsError(f"{path}:{number}: key and caption must be strings")
    captions[os.path.normpath(key)] = caption  # "./a/b.mp4" and "a/b.mp4" name one source
  return captions


def caption_for(captions: dict[str, str], *, clip_id: str, source: str, src_dir: str,
                source_caption: str) -> str:
  """The clip's own caption, else its source's (by path relative to src_dir, or absolute), else the source's
  own caption."""
  absolute = os.path.normpath(os.path.join(src_dir, source))
  for key in (clip_id, os.path.normpath(source), absolute):
    if key in captions:
      return captions[key]
  return source_caption
