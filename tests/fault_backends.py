"""Adapters that fail on purpose, plugged in through $QUANTBENCH_BACKENDS (test-only).

No real library crashes on demand, so these stand in for a library that raises, segfaults
(os.abort) or hangs while quantizing."""

import os
import sys
import time

from quantbench.backends.baseline import BaselineBackend


class RaisingBackend(BaselineBackend):
    name = "raising"

    def quantize(self, *args, **kwargs):
        raise RuntimeError("simulated kernel crash")


class AbortingBackend(BaselineBackend):
    name = "aborting"

    def quantize(self, *args, **kwargs):
        print("about to abort", file=sys.stderr, flush=True)
        os.abort()


class HangingBackend(BaselineBackend):
    name = "hanging"

    def quantize(self, *args, **kwargs):
        time.sleep(3600)
