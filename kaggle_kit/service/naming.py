"""What the service calls its model, and what it does with the `model` a client sends.

Kaggle mounts a model at /kaggle/input/<model>/<framework>/<variation>/<version>, e.g.
.../qwen-3/transformers/14b-awq/1: the folder's own name is a version number. The
default name comes from the model's config (`_name_or_path`, when it names a hub id),
else from the Kaggle path ("qwen-3-14b-awq"), else the folder.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

_KAGGLE = re.compile(r"/kaggle/input/(?P<model>[^/]+)/(?P<framework>[^/]+)/(?P<variation>[^/]+)/(?P<version>\d+)/?$")


def default_served_name(model_path: str) -> str:
    path = str(model_path).rstrip("/")
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, ValueError):
        cfg = {}
    hub = cfg.get("_name_or_path") or ""
    if re.fullmatch(r"[\w.-]+/[\w.-]+", hub):
        return hub
    m = _KAGGLE.search(path)
    if m:
        return f"{m['model']}-{m['variation']}"
    parts = [p for p in Path(path).parts if p not in ("/", "")]
    while len(parts) > 1 and parts[-1].isdigit():  # a version folder names nothing
        parts.pop()
    return parts[-1] if parts else path
