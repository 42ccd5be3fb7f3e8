"""Ctrl-C and SIGTERM during training: finish the current step, checkpoint it, exit 130 / 143.

The first signal asks the loop to stop after the step in progress (which is then saved); a
second one abandons that step at once (the last checkpoint stays the newest). Either way the
process ends with one line saying what was saved and the exact resume command.
"""

from __future__ import annotations

import signal
import sys

from hapo_cli.errors import HapoError

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}


class Interrupted(HapoError):
    """Training stopped on a signal; `exit_code` is 130 (SIGINT) or 143 (SIGTERM)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


class StopSignals:
    """Context manager: SIGINT/SIGTERM set `signum` (first) or raise Interrupted (second)."""

    def __init__(self, abandon_message):
        self.signum: int | None = None
        self._abandon = abandon_message  # () -> str, the one line for an abandoned step
        self._old = {}

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            raise Interrupted(self._abandon(), EXIT_CODES.get(signum, 130))
        self.signum = signum
        print(f"\n{signal.Signals(signum).name}: stopping after this step (send it again to abandon the step)",
              file=sys.stderr, flush=True)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.signum, 130)

    def __enter__(self) -> StopSignals:
        for s in EXIT_CODES:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for s, old in self._old.items():
            signal.signal(s, old)
