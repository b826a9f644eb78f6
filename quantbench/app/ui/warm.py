"""Keeps the dashboard's default views current while trial files arrive.

The store's index (results/index.py) computes a view when someone asks for it after the store
changed; a dashboard left open while a sweep runs would make the first person who opens Results
or Charts after each trial wait for the table and the figure (seconds on a 100,000-row store),
and everyone who asks meanwhile wait with them. A background thread asks first: every few
seconds it requests the default views, which costs a stat of each trial file when nothing
changed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

WARM_INTERVAL_S = 2.0


def keep_warm(views: list[Callable[[], object]], stop: threading.Event, interval_s: float = WARM_INTERVAL_S) -> None:
    """Call each of `views` now and then every `interval_s`, in a daemon thread, until `stop` is set."""

    def loop() -> None:
        while not stop.is_set():
            for view in views:
                view()
            stop.wait(interval_s)

    threading.Thread(target=loop, name="quantbench-warm-views", daemon=True).start()
