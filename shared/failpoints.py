"""Named failpoints for fault tests: make a worker die or fail at an exact place, once or always.

    SELFJUDGE_FAILPOINTS="filter.before_commit=kill:/tmp/once-marker,reasoner.start=raise"

`sleep:SECONDS` pauses there (a slow step); `kill:MARKER` SIGKILLs the process the first time it is reached (it creates MARKER first, so the
redelivered task, run by the restarted worker, gets through); `raise` raises every time. With
the variable unset (always, outside tests) a failpoint is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


class FailpointError(RuntimeError):
    pass


def failpoint(name: str) -> None:
    spec = os.environ.get("SELFJUDGE_FAILPOINTS")
    if not spec:
        return
    for item in spec.split(","):
        point, _, action = item.partition("=")
        if point.strip() != name:
            continue
        if action.startswith("kill:"):
            marker = Path(action[len("kill:") :])
            if not marker.exists():
                marker.touch()
                os.kill(os.getpid(), signal.SIGKILL)
        elif action.startswith("sleep:"):
            time.sleep(float(action[len("sleep:") :]))
        elif action == "raise":
            raise FailpointError(f"failpoint {name} raised (SELFJUDGE_FAILPOINTS)")
