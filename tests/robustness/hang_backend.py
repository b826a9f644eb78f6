"""A test-only adapter (plugged in through $QUANTBENCH_BACKENDS) whose quantize starts a helper
process and then hangs, the way a library that shells out to a compiler or server might."""

import os
import subprocess
import sys
import time
from pathlib import Path

from quantbench.backends.baseline import BaselineBackend


class HangingWithChildBackend(BaselineBackend):
    name = "hanging-child"

    def quantize(self, *args, **kwargs):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        Path(os.environ["QB_CHILD_PID"]).write_text(str(child.pid))
        time.sleep(3600)
