"""A test-only adapter (plugged in through $QUANTBENCH_BACKENDS) that talks the way libraries do (a
print, a line on stderr, a warning), records its process id, and, when flag files in $QB_NOISY_DIR
say so, holds 256 MiB (`allocate`) or is killed by SIGKILL before it returns (`die`)."""

import os
import signal
import sys
import warnings
from pathlib import Path

from quantbench.backends.baseline import BaselineBackend

BALLAST_BYTES = 256 * 2**20


class NoisyBackend(BaselineBackend):
    name = "noisy"

    def quantize(self, *args, **kwargs):
        flags = Path(os.environ["QB_NOISY_DIR"])
        print("noisy: a line on stdout", flush=True)
        print("noisy: a line on stderr", file=sys.stderr, flush=True)
        warnings.warn("noisy: a library warning", stacklevel=1)
        with (flags / "pids").open("a") as f:
            f.write(f"{os.getpid()}\n")
        ballast = b"\x01" * BALLAST_BYTES if (flags / "allocate").exists() else b""  # written: resident
        if (flags / "die").exists():
            print("noisy: about to be killed", file=sys.stderr, flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        model = super().quantize(*args, **kwargs)
        del ballast
        return model
