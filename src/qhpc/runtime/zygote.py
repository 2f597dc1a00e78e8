"""The template process ("zygote"): imports the preload modules once, forks program processes.

Before its first fork it may run a warm-up (``--warm-up module:function``, see
:mod:`qhpc.runtime.warmup`), so children inherit warm caches, not only imports.

Started by the pool with ``subprocess`` (``python -m qhpc.runtime.zygote``), never
forked from the broker: the broker is multi-threaded and holds credentials and
database connections; the template starts from a clean interpreter with a scrubbed
environment. It is single-threaded in Python and runs no numerical work, so
forking it is safe (a BLAS/OpenMP thread pool that had been used would not be).

Loop (one epoll): the pool socket (``SOCK_SEQPACKET``) and one pidfd per child.

- ``ForkRequest`` + 3 descriptors → fork; the child runs :func:`child_main`.
- a child's pidfd becomes readable → SIGKILL its process group, ``wait4`` it, reap
  the group's other members (re-parented here: this process is a child subreaper),
  send ``Reaped``; then kill and reap orphans that escaped into other groups.
- ``DrainRequest`` → exit once no children are left. End of stream (the pool is
  gone) → kill every child's group and exit.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import importlib
import os
import select
import signal
import socket
import sys
import time
import traceback
from typing import NoReturn

from qhpc.runtime import isolation
from qhpc.runtime.child import child_main
from qhpc.runtime.hooks import QpuFactory, load_qpu_factory
from qhpc.runtime.warmup import run_warm_up
from qhpc.runtime.wire import (
    TEMPLATE_REQUEST_DECODER,
    DrainRequest,
    Forked,
    ForkFailed,
    ForkRequest,
    Reaped,
    TemplateFailed,
    TemplateReady,
    decode_packet,
    encode,
)

#: how long to wait for a killed process group's members before reporting anyway
GROUP_REAP_TIMEOUT_S = 2.0
#: the orphan sweep reads all of /proc (~1 ms): run it when idle, this long after a reap
SWEEP_DELAY_S = 0.05


def rss_mb() -> float:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


_MADV_HUGEPAGE = 14
_MADV_COLLAPSE = 25  # Linux 6.1+
_HUGE = 1 << 21


def _dense_private_regions() -> list[tuple[int, int]]:
    """Private writable anonymous mappings (and the heap) that are at least 90% resident."""
    regions: list[tuple[int, int]] = []
    current: tuple[int, int] | None = None
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):
                fields = line.split()
                anonymous = len(fields) < 6 or fields[5] == "[heap]"
                private_rw = fields[1].startswith("rw") and fields[1][3] == "p"
                low, high = (int(part, 16) for part in first.split("-"))
                current = (low, high) if anonymous and private_rw else None
            elif first == "Rss:" and current is not None:
                low, high = current
                if int(line.split()[1]) * 1024 >= 0.9 * (high - low):
                    regions.append(current)
                current = None
    return regions


def collapse_huge_pages() -> int:
    """Back the template's densely used private memory with 2 MiB pages where possible.

    Fork copies, and exit tears down, one page-table entry per 4 KiB page the
    template has touched (~15k with qiskit loaded): much of the cost of forking a
    program process and of its exit. A huge page is one entry. Only dense regions:
    collapsing a sparse one (qiskit reserves 1 GiB it barely touches) would make it
    resident. Best effort (``MADV_COLLAPSE`` needs Linux 6.1); returns the regions
    collapsed.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    collapsed = 0
    for low, high in _dense_private_regions():
        start, end = (low + _HUGE - 1) & ~(_HUGE - 1), high & ~(_HUGE - 1)
        if end > start:
            libc.madvise(start, end - start, _MADV_HUGEPAGE)
            collapsed += libc.madvise(start, end - start, _MADV_COLLAPSE) == 0
    return collapsed


def _reap_group(pgid: int) -> None:
    """Reap every child of ours still in process group ``pgid`` (all were SIGKILLed)."""
    deadline = time.monotonic() + GROUP_REAP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-pgid, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.0002)


def _orphans(known: set[int]) -> list[int]:
    """Children of ours that we did not fork: orphans of finished programs."""
    me, found = os.getpid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) in known:
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rpartition(b")")[2].split()
        except OSError:
            continue
        if len(fields) > 1 and int(fields[1]) == me:
            found.append(int(entry.name))
    return found


class Template:
    def __init__(
        self, sock: socket.socket, make_qpu: QpuFactory, run_as: isolation.RunAs | None
    ) -> None:
        self.sock = sock
        self.make_qpu = make_qpu
        self.run_as = run_as
        self.epoll = select.epoll()
        self.children: dict[int, int] = {}  # pidfd → pid
        self.forked = 0
        self.draining = False
        self.sweep_at: float | None = None

    def send(self, message: ForkFailed | Forked | Reaped | TemplateReady) -> None:
        try:
            self.sock.send(encode(message))
        except OSError:  # the pool is gone: nobody is left to serve
            self.shutdown()

    def fork(self, request: ForkRequest, fds: list[int]) -> None:
        if len(fds) != 3 or self.draining:
            for fd in fds:
                os.close(fd)
            self.send(ForkFailed(request.seq, "draining" if self.draining else "expected 3 fds"))
            return
        try:
            pid = os.fork()
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            self.send(ForkFailed(request.seq, f"fork failed: {exc}"))
            return
        if pid == 0:
            child_main(
                fds[0], fds[1], fds[2], self.make_qpu, os.getppid(), self.run_as, request.workdir
            )
        for fd in fds:
            os.close(fd)
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = pid
        self.epoll.register(pidfd, select.EPOLLIN)
        self.forked += 1
        self.send(Forked(request.seq, pid, rss_mb(), self.forked))

    def reap(self, pidfd: int) -> None:
        pid = self.children.pop(pidfd)
        self.epoll.unregister(pidfd)
        os.close(pidfd)
        # Kill first: while the leader is an unreaped zombie its group id cannot be reused.
        isolation.kill_group(pid)
        _, status, usage = os.wait4(pid, 0)
        reaped_at = time.monotonic()
        _reap_group(pid)
        self.send(Reaped(pid, status, usage.ru_utime + usage.ru_stime, usage.ru_maxrss, reaped_at))
        self.sweep_at = time.monotonic() + SWEEP_DELAY_S

    def sweep(self) -> None:
        """Kill orphans that left their program's process group (``setsid``, double fork)."""
        for _ in range(20):
            stray = _orphans(set(self.children.values()))
            if not stray:
                return
            for pid in stray:
                isolation.kill_group(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for pid in stray:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass

    def shutdown(self) -> NoReturn:
        for pid in self.children.values():
            isolation.kill_group(pid)
            try:  # a child that has not reached setsid() yet is no group leader
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.children.values():
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            _reap_group(pid)
        os._exit(0)

    def on_request(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, 65536, 3)
        except ConnectionResetError:
            data, fds = b"", []
        if not data:
            self.shutdown()
        request = decode_packet(TEMPLATE_REQUEST_DECODER, data)
        if isinstance(request, ForkRequest):
            self.fork(request, fds)
        elif isinstance(request, DrainRequest):
            self.draining = True

    def serve(self) -> NoReturn:
        self.epoll.register(self.sock.fileno(), select.EPOLLIN)
        sock_fd = self.sock.fileno()
        while True:
            if self.draining and not self.children:
                self.sweep()
                os._exit(0)
            timeout = -1.0
            if self.sweep_at is not None:
                timeout = self.sweep_at - time.monotonic()
                if timeout <= 0:
                    self.sweep_at = None
                    self.sweep()
                    continue
            for fd, _ in self.epoll.poll(timeout):
                if fd == sock_fd:
                    self.on_request()
                elif fd in self.children:
                    self.reap(fd)


def main(argv: list[str] | None = None) -> NoReturn:
    parser = argparse.ArgumentParser(prog="python -m qhpc.runtime.zygote")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--preload", default="")
    parser.add_argument("--qpu-factory", default=None)
    parser.add_argument("--huge-pages", action="store_true")
    parser.add_argument("--warm-up", default=None, help="module:function run before forking")
    parser.add_argument("--run-as", default=None, help="USER:UID:GID programs run as")
    options = parser.parse_args(argv)
    sock = socket.socket(fileno=options.fd)
    # Its own session already (start_new_session); a terminal's Ctrl-C is not for it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.monotonic()
    try:
        for name in filter(None, options.preload.split(",")):
            importlib.import_module(name)
        make_qpu = load_qpu_factory(options.qpu_factory)
        isolation.set_child_subreaper()
    except BaseException:
        sock.send(encode(TemplateFailed(traceback.format_exc(limit=8))))
        os._exit(1)
    if options.warm_up:
        # Children inherit what this warmed (see qhpc.runtime.warmup); a failure is
        # logged there and the template starts cold.
        run_warm_up(options.warm_up)
    # Everything imported so far lives as long as the template: freezing it keeps the
    # children's garbage collector from touching (and copying) those pages.
    gc.collect()
    gc.freeze()
    if options.huge_pages:
        collapse_huge_pages()
    sock.send(encode(TemplateReady(os.getpid(), time.monotonic() - started, rss_mb())))
    sys.stdout.flush()
    run_as = None
    if options.run_as:
        user, uid, gid = options.run_as.rsplit(":", 2)
        run_as = isolation.RunAs(user, int(uid), int(gid))
    Template(sock, make_qpu, run_as).serve()


if __name__ == "__main__":
    main()
