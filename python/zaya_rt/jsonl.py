"""Line-by-line JSON input shared by the trainers' data (`zaya_rt.train.data`) and the RSA problem files."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """Yields (line number from 1, object) for each non-blank line; a malformed line raises ValueError naming
    the file and line number."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: line {line_no}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}: line {line_no}: expected a JSON object, got {type(obj).__name__}")
            yield line_no, obj
