"""The pool's side of a template process: spawning it, asking it to fork, its spares.

See :mod:`qhpc.runtime.pool` for the process tree and :mod:`qhpc.runtime.zygote`
for the template itself.
"""

from __future__ import annotations

import os
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import qhpc
from qhpc.runtime import isolation
from qhpc.runtime.errors import ProgramArgumentsError
from qhpc.runtime.isolation import RunAs
from qhpc.runtime.wire import (
    TEMPLATE_DECODER,
    DrainRequest,
    ForkRequest,
    TemplateToPool,
    decode_packet,
    encode,
)

_SRC_DIR = str(Path(qhpc.__file__).resolve().parent.parent)


@dataclass
class Spare:
    """A forked program process waiting for its program, and the pool's ends of its channels."""

    control: socket.socket
    stdout_fd: int
    stderr_fd: int
    template: Template
    #: made ahead (mkdtemp + chown cost ~0.1 ms), owned by the program's uid
    workdir: str
    pid: int = 0

    def discard(self) -> None:
        # Closing the control socket is the spare's signal to exit.
        self.control.close()
        for fd in (self.stdout_fd, self.stderr_fd):
            os.close(fd)
        isolation.remove_tree(self.workdir)


@dataclass
class Template:
    generation: int
    popen: subprocess.Popen[bytes]
    sock: socket.socket
    pid: int = 0
    ready: bool = False
    forked: int = 0
    rss_mb: float = 0.0
    #: fork requests sent, by sequence number, with the pool's ends of the channels
    pending: dict[int, Spare] = field(default_factory=dict)
    #: pids of this template's children that run a program
    running: set[int] = field(default_factory=set)

    def request_fork(self, seq: int, workdir: str) -> None:
        """Ask for one more program process; its channel ends travel with the request."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        self.pending[seq] = Spare(ours, out_r, err_r, self, workdir)
        try:
            socket.send_fds(
                self.sock, [encode(ForkRequest(seq, workdir))], [theirs.fileno(), out_w, err_w]
            )
        except OSError:
            self.pending.pop(seq).discard()
        finally:
            theirs.close()
            os.close(out_w)
            os.close(err_w)

    def receive(self) -> TemplateToPool | None:
        """The next message (``None`` at end of stream); ``BlockingIOError`` if none yet."""
        try:
            packet = self.sock.recv(65536, socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise
        except OSError:
            return None
        return decode_packet(TEMPLATE_DECODER, packet) if packet else None

    def drain(self) -> None:
        """No more forks; it exits once its running programs have ended."""
        try:
            self.sock.send(encode(DrainRequest()))
        except OSError:
            pass

    def reap(self) -> None:
        try:  # it closed its end by exiting (or dying): reaping is immediate
            self.popen.wait(2.0)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def spawn_template(
    generation: int, *, python: str, preload: tuple[str, ...], env_allow: tuple[str, ...],
    qpu_factory: str | None, huge_pages: bool, run_as: RunAs | None, warm_up: str | None = None,
) -> Template:  # fmt: skip
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    # Spawned, not forked: a clean interpreter with a scrubbed environment, so the
    # broker's threads, credentials and connections never reach a program.
    env = {name: os.environ[name] for name in env_allow if name in os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_SRC_DIR, env.get("PYTHONPATH")]))
    command = [python, "-m", "qhpc.runtime.zygote", "--fd", str(theirs.fileno()),
               "--preload", ",".join(preload)]  # fmt: skip
    if qpu_factory is not None:
        command += ["--qpu-factory", qpu_factory]
    if huge_pages:
        command.append("--huge-pages")
    if warm_up is not None:
        command += ["--warm-up", warm_up]
    if run_as is not None:
        command += ["--run-as", f"{run_as.user}:{run_as.uid}:{run_as.gid}"]
    popen = subprocess.Popen(
        command, pass_fds=(theirs.fileno(),), env=env, cwd="/", stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    theirs.close()
    return Template(generation, popen, ours)


def read_program(program: str | os.PathLike[str]) -> tuple[str, str]:
    """``(source, filename)`` of a ``.py`` path or of source text."""
    if isinstance(program, os.PathLike) or ("\n" not in program and program.endswith(".py")):
        path = Path(program)
        try:
            return path.read_text(encoding="utf-8"), str(path.resolve())
        except (OSError, UnicodeDecodeError) as exc:
            raise ProgramArgumentsError(f"cannot read program file {path}: {exc}") from None
    return program, "<program>"
