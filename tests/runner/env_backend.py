"""A test-only adapter that runs in its own method environment: its "library" is a distribution
that only the test's tiny environment has (an empty dist-info), so the runner must start its worker
there. Plugged in through $QUANTBENCH_BACKENDS; otherwise it is the baseline, and it writes the
prefix of the interpreter that quantized to the file named by $QUANTBENCH_TEST_ENV_MARK."""

import os
import sys
from pathlib import Path

from quantbench.backends.baseline import BaselineBackend

LIBRARY = "quantbench-envtest"
ENVIRONMENT = "tinyenv"


class EnvBackend(BaselineBackend):
    name = "envtest"
    library = LIBRARY
    environment = ENVIRONMENT

    def quantize(self, *args, **kwargs):
        Path(os.environ["QUANTBENCH_TEST_ENV_MARK"]).write_text(sys.prefix)
        return super().quantize(*args, **kwargs)
