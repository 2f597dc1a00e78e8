"""Linux capabilities: a pool that is not root may still switch programs to another uid.

The pool switches a program process to an unprivileged uid (:mod:`qhpc.runtime.isolation`).
That needs root, or just the capabilities the switch uses, which is how the systemd
unit in ``deploy/systemd`` runs the broker: as user ``qhpc`` with ambient

- ``CAP_SETUID``, ``CAP_SETGID``: ``setgroups``/``setresgid``/``setresuid`` to the
  program's uid;
- ``CAP_CHOWN``: hand each work dir to that uid before the program starts;
- ``CAP_KILL``: stop (signal) the program's process group, which runs under that uid;
- ``CAP_DAC_OVERRIDE``, ``CAP_FOWNER``: remove the work dir the program filled, with
  its own modes, sticky subdirectories included.

A non-root process keeps its capabilities across ``setresuid`` (the kernel clears
them only when a uid changes *from 0*), so after the switch a program process would
still hold ``CAP_SETUID`` and could become root: :func:`clear_capabilities` drops
every set (effective, permitted, inheritable, hence ambient) before user code runs.
"""

from __future__ import annotations

import ctypes
import os

CAP_CHOWN = 0
CAP_DAC_OVERRIDE = 1
CAP_FOWNER = 3
CAP_KILL = 5
CAP_SETGID = 6
CAP_SETUID = 7
#: what the pool needs to run programs under another uid and clean up after them
POOL_CAPABILITIES = (CAP_SETUID, CAP_SETGID, CAP_CHOWN, CAP_KILL, CAP_DAC_OVERRIDE, CAP_FOWNER)

_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


class _Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _Data(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def effective_capabilities(status: str = "/proc/self/status") -> int:
    """This process's effective capability set, as a bit mask (0 if unknown)."""
    try:
        with open(status, encoding="ascii") as handle:
            for line in handle:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError):
        pass
    return 0


def can_switch_ids() -> bool:
    """Whether this process may switch a child to another uid: root, or the capabilities."""
    if os.geteuid() == 0:
        return True
    effective = effective_capabilities()
    return all(effective >> cap & 1 for cap in (CAP_SETUID, CAP_SETGID))


def clear_capabilities() -> None:
    """Drop every capability of this process (the ambient set first, as the kernel does
    on its own only for a uid leaving 0); raises ``OSError`` if the kernel refuses."""
    libc = ctypes.CDLL(None, use_errno=True)
    # EINVAL: a kernel before ambient capabilities (4.3) has none to clear.
    if libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0:
        code = ctypes.get_errno()
        if code != 22:
            raise OSError(code, f"prctl(PR_CAP_AMBIENT_CLEAR_ALL): {os.strerror(code)}")
    header = _Header(_LINUX_CAPABILITY_VERSION_3, 0)
    empty = (_Data * 2)()  # version 3: two 32-bit words per set, all zero
    if libc.capset(ctypes.byref(header), empty) != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"capset: {os.strerror(code)}")
    if effective_capabilities():
        raise PermissionError("capabilities were not dropped")
