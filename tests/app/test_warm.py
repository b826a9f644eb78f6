import threading

from quantbench.app.ui.warm import keep_warm


def test_views_are_requested_again_and_again_until_stopped():
    calls, enough, stop = [], threading.Event(), threading.Event()

    def view():
        calls.append(threading.current_thread().name)
        if len(calls) >= 6:
            enough.set()

    keep_warm([view, view], stop, interval_s=0.01)
    assert enough.wait(10)
    stop.set()
    settled = len(calls)
    threading.Event().wait(0.1)
    assert len(calls) <= settled + 2  # at most the round under way finishes
    assert set(calls) == {"quantbench-warm-views"}  # never the caller's thread
