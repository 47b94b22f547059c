"""When a run must stop: a Kaggle session ends 12 hours after it starts, whatever is running.

`deadline()` turns what a user writes into a Unix time: None (no deadline), "kaggle"
(the session's start + KK_SESSION_HOURS, default 12, minus a safety margin for writing
outputs), a duration from now ("2h30m", "45m", "900s"), an ISO time, or a Unix time.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import time
from pathlib import Path

SAFETY_MARGIN_S = 15 * 60  # leave time to write tables and figures before the session is killed


def session_start() -> float:
    """The container's first process start time (a Kaggle session starts its container); else ours."""
    try:
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime"))
        ticks = os.sysconf("SC_CLK_TCK")
    except (OSError, StopIteration, ValueError, IndexError):
        return time.time()
    for pid in ("1", "self"):  # pid 1 may be unreadable (another user's): then our own start
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            return btime + int(fields[19]) / ticks  # field 22 of stat: starttime, in clock ticks since boot
        except (OSError, ValueError, IndexError):
            continue
    return time.time()


def parse_duration(text: str) -> float | None:
    m = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*", text)
    if not m or not any(m.groups()):
        return None
    h, mi, s = (float(g or 0) for g in m.groups())
    return h * 3600 + mi * 60 + s


def deadline(spec: str | float | int | None, now: float | None = None) -> float | None:
    now = time.time() if now is None else now
    if spec is None or spec == "":
        return None
    if isinstance(spec, (int, float)):
        return float(spec)
    spec = str(spec).strip()
    if spec.lower() == "kaggle":
        hours = float(os.environ.get("KK_SESSION_HOURS") or 12)
        return session_start() + hours * 3600 - SAFETY_MARGIN_S
    seconds = parse_duration(spec)
    if seconds is not None:
        return now + seconds
    try:
        when = dt.datetime.fromisoformat(spec)
    except ValueError:
        raise ValueError(f"deadline {spec!r}: use 'kaggle', a duration like '2h30m', an ISO time, or a Unix time") from None
    if when.tzinfo is None:
        when = when.astimezone()  # local time
    return when.timestamp()


def describe(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
