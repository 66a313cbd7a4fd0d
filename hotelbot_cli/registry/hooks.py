"""Two helpers every registry writer uses: the UTC timestamp it records, and the crash-test hook."""

from __future__ import annotations

import datetime as _dt
import os


def crashpoint(name: str) -> None:
    """Test hook: ``HOTELBOT_TEST_CRASH_AT=name`` kills this process here with SIGKILL.

    The crash-safety tests kill real deploy/rollback subprocesses at every named point; in normal
    use the variable is unset and this is one dictionary lookup.
    """
    if os.environ.get("HOTELBOT_TEST_CRASH_AT") == name:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
