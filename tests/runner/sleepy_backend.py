"""A test-only adapter whose quantize step can be made to hang, with a child process of its own,
so cancelling has a long trial and a process tree to kill. Plugged in through
$QUANTBENCH_BACKENDS (the worker process imports it too).

While the file named by $QUANTBENCH_TEST_HANG exists, `quantize` starts `sleep`, writes
"<worker pid> <child pid>" to that file's sibling `pids`, and sleeps; otherwise it is the baseline.
"""

import os
import subprocess
import time
from pathlib import Path

from quantbench.backends.baseline import BaselineBackend


class SleepyBackend(BaselineBackend):
    name = "sleepy"

    def quantize(self, *args, **kwargs):
        flag = Path(os.environ.get("QUANTBENCH_TEST_HANG", "/nonexistent"))
        if flag.exists():
            child = subprocess.Popen(["sleep", "600"])
            (flag.parent / "pids").write_text(f"{os.getpid()} {child.pid}")
            time.sleep(600)
        return super().quantize(*args, **kwargs)
