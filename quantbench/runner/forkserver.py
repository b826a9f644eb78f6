"""A warm parent per interpreter that forks a fresh process per trial.

Starting a trial's worker as a new interpreter pays for importing torch, transformers and
quantbench every time. A fork server pays once: it is started with the interpreter a trial needs
(`python -m quantbench.runner.worker --serve`), imports what every trial imports, and then forks one
child per request. Each child is still its own process, in its own process group, so a crash, an
OOM kill, a hang, a timeout or a cancel ends that trial only, and its memory peaks are its own
(docs/reliability.md, "Fork server").

Fork safety: the server runs no torch op, so torch's thread pool never starts before a fork; the
native threads that exist after the imports (OpenBLAS's pool, pyarrow's jemalloc) register their
own fork handlers. Each child sets up its own threads.

The protocol, over a Unix socketpair made by the client:
- a request is one message: JSON (the child's arguments) with the file descriptors the child gets
  (its log file as stdout and stderr, its progress pipe, and the write end of a status socket);
- on the status socket the server answers {"pid": N} once the child is in its own process group,
  then {"returncode": R} (negative: killed by signal -R) when it ends, and closes it. EOF without a
  returncode means the server itself died.
The server exits, killing its children, when the client's end closes: the sweep that started it
died or let it go. Until it is ready it also dies with the thread that started it (PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
MAX_FDS = 8
MAX_REQUEST_BYTES = 1 << 20


def set_parent_death_signal(sig: int) -> None:
    """Linux: have the kernel send `sig` to this process when the thread that started it ends (0: never).
    Does nothing without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        return
    libc.prctl(PR_SET_PDEATHSIG, sig)


class ServerDied(Exception):
    """The fork server exited before or while running a request."""

    def __init__(self, returncode: int, stderr_tail: list[str]) -> None:
        super().__init__(f"fork server exited ({returncode})")
        self.returncode, self.stderr_tail = returncode, stderr_tail


class ForkedChild:
    """The client's handle on one forked child, in the spirit of subprocess.Popen: `pid` (once the
    server sent it), `poll()`, `wait(timeout)`, `returncode`."""

    def __init__(self, server: ForkServer, status: socket.socket) -> None:
        self.server, self.status = server, status
        self.pid: int | None = None
        self.returncode: int | None = None
        self.server_died = False
        self._pending = b""

    def fileno(self) -> int:
        return self.status.fileno()

    def _read(self, timeout: float | None) -> bool:
        """Read what the server sent within `timeout`; True once the child's end is known."""
        if self.returncode is not None:
            return True
        self.status.settimeout(timeout)
        try:
            chunk = self.status.recv(4096)
        except (TimeoutError, BlockingIOError):
            return False
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        for line in lines:
            message = json.loads(line)
            self.pid = message.get("pid", self.pid)
            if "returncode" in message:
                self.returncode = int(message["returncode"])
        if not chunk and self.returncode is None:  # EOF without an answer: the server is gone
            self.server_died = True
            self.returncode = self.server.wait_exit()
        if self.returncode is not None:
            self.status.close()
        return self.returncode is not None

    def wait_pid(self, timeout: float) -> int | None:
        """The child's pid, waiting up to `timeout` for the server to fork it; None if not forked yet."""
        while self.pid is None and self.returncode is None:
            if not self._read(timeout):
                break
        return self.pid

    def poll(self) -> int | None:
        self._read(0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if not self._read(timeout):
            raise subprocess.TimeoutExpired("forked child", timeout or 0)
        assert self.returncode is not None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL the child's whole process group (its own children too) and wait for its end. A
        request the server has not forked yet (it is still importing) is killed with the server."""
        if self.wait_pid(0) is None and self.returncode is None:
            self.server.kill()
        elif self.returncode is None:
            with contextlib.suppress(ProcessLookupError):  # already gone
                os.killpg(self.pid, signal.SIGKILL)
        self.wait()


class ForkServer:
    """The client side of one server process: `fork(request, fds)` starts a child."""

    def __init__(self, python: str, env: dict[str, str]) -> None:
        self.python, self.env = python, env
        # Its start-up output (import notices), copied into each child's log; closed by close().
        self._log = tempfile.NamedTemporaryFile(prefix="quantbench-forkserver-", suffix=".log")  # noqa: SIM115
        client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [python, "-m", "quantbench.runner.worker", "--serve", str(server.fileno()), self._log.name],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                pass_fds=(server.fileno(),),
                start_new_session=True,  # a Ctrl-C on the terminal reaches the sweep only, which kills what it must
                env=env,
            )
        except OSError:
            client.close()
            self._log.close()
            raise
        finally:
            server.close()
        self.control = client
        self._lock = threading.Lock()

    def fork(self, request: dict[str, Any], fds: list[int]) -> ForkedChild:
        """Ask for a child running `request`; it gets `fds` in that order after its status socket's."""
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            payload = json.dumps(request).encode()
            with self._lock:
                socket.send_fds(self.control, [payload], [theirs.fileno(), *fds])
        except OSError:  # the server is gone: its exit code and last words say why
            mine.close()
            raise ServerDied(self.wait_exit(), self.stderr_tail()) from None
        finally:
            theirs.close()
        return ForkedChild(self, mine)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_exit(self) -> int:
        return self.proc.wait()

    def stderr_tail(self, lines: int = 20) -> list[str]:
        return Path(self._log.name).read_text(errors="replace").splitlines(keepends=True)[-lines:]

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def close(self) -> None:
        """Let the server go: it kills any child still running and exits."""
        self.control.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.kill()
        self._log.close()


_servers: dict[str, ForkServer] = {}
_servers_lock = threading.Lock()


def server_for(python: str, env: dict[str, str]) -> ForkServer:
    """The warm server of `python` whose children see `env`, started now if there is none. A server
    forks children with the environment it was started with (sys.path, HF_HOME… are read at import),
    so a changed environment replaces the server rather than being patched into its children."""
    with _servers_lock:
        server = _servers.get(python)
        if server is not None and (server.env != env or not server.alive()):
            server.close()
            server = None
        if server is None:
            server = _servers[python] = ForkServer(python, env)
        return server


def forget(server: ForkServer) -> None:
    """Drop a server that died, so the next request starts a fresh one."""
    with _servers_lock:
        if _servers.get(server.python) is server:
            del _servers[server.python]
    server.close()


def serve(control_fd: int, start_log: str, target: Callable[[dict[str, Any], list[int], str], int]) -> int:
    """The server's loop (after its imports): fork a child per request, which runs
    `target(request, fds, start_log)` and exits with its return value; report pids and exit codes."""
    set_parent_death_signal(0)  # from now on the control socket's EOF says the sweep is gone
    control = socket.socket(fileno=control_fd)
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    os.set_blocking(wake_read, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd hears SIGCHLD
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)
    children: dict[int, socket.socket] = {}
    me = os.getpid()
    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                try:
                    payload, fds, _, _ = socket.recv_fds(control, MAX_REQUEST_BYTES, MAX_FDS)
                except OSError:
                    payload, fds = b"", []
                if not payload:  # the client is gone: so are its trials
                    for pid in children:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(pid, signal.SIGKILL)
                    return 0
                status, *child_fds = (socket.socket(fileno=fds[0]), *fds[1:])
                pid = os.fork()
                if pid == 0:
                    inherited = [control, status, *children.values()]
                    _child(json.loads(payload), child_fds, start_log, target, inherited, (wake_read, wake_write), me)
                with contextlib.suppress(OSError):  # the child may have set its group already, or died
                    os.setpgid(pid, pid)
                for fd in child_fds:
                    os.close(fd)
                _answer(status, {"pid": pid})
                children[pid] = status
            else:
                with contextlib.suppress(OSError):
                    while os.read(wake_read, 4096):
                        pass
                _reap(children)


def _reap(children: dict[int, socket.socket]) -> None:
    for pid in list(children):
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = children.pop(pid)
            _answer(status, {"returncode": os.waitstatus_to_exitcode(code)})
            status.close()


def _answer(status: socket.socket, message: dict[str, int]) -> None:
    with contextlib.suppress(OSError):  # the client stopped listening; the server goes on
        status.sendall(json.dumps(message).encode() + b"\n")


def _child(
    request: dict[str, Any],
    fds: list[int],
    start_log: str,
    target: Callable[[dict[str, Any], list[int], str], int],
    inherited: list[socket.socket],
    wake: tuple[int, int],
    server_pid: int,
) -> None:
    """The forked child: shed the server's state, run the target, exit without the server's cleanup."""
    code = 1
    try:
        os.setpgid(0, 0)  # its own group: a kill of the trial reaches what the trial starts
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for sock in inherited:
            sock.close()
        for fd in wake:
            os.close(fd)
        set_parent_death_signal(signal.SIGKILL)  # dies with the server, which dies with the sweep
        if os.getppid() != server_pid:  # the server died before the guard was set
            os._exit(1)
        code = target(request, fds, start_log)
    except BaseException:  # anything the target did not handle ends this child, never the server's loop
        import traceback

        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
