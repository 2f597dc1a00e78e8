"""Configuration of ``qdmi`` resources, checked without loading any QDMI library.

A ``qdmi`` resource names a device by its stable QDMI id, optionally a driver library
to open it through and a file holding the session token. The checks here run when a
resources file is read (so a mistake is reported then, naming the key) and again when
the adapter is built:

- a credential never sits in the resources file: the file is read by admins, copied to
  backups and shown (``qhpc resources``); an inline ``token`` (or ``password``, ``api_key``
  …) is refused with the way to do it instead (``token_file``);
- the token file is the broker user's alone (the same rule as the vendor proxy's
  credential files): one owned by another user, or that a group or others may read or
  write, is refused, as are a missing, unreadable, empty or oversized one; its content never
  appears in an error;
- the driver is an absolute path to a shared library (ELF or Mach-O header) — it is
  loaded into the broker, so a path that is not one is refused before anything loads.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from qhpc.resources.errors import ResourceConfigError

#: keys that would put a credential into the resources file itself
INLINE_SECRET_KEYS = frozenset(
    {"token", "password", "api_key", "apikey", "secret", "auth_token", "access_token"}
)
#: the longest token file read (a token is a line; a bigger file is the wrong file)
MAX_TOKEN_BYTES = 64 * 1024
#: headers of shared libraries: ELF, and Mach-O (32/64-bit, both byte orders, universal)
_LIBRARY_MAGIC = (
    b"\x7fELF",
    b"\xfe\xed\xfa\xce",
    b"\xfe\xed\xfa\xcf",
    b"\xce\xfa\xed\xfe",
    b"\xcf\xfa\xed\xfe",
    b"\xca\xfe\xba\xbe",
)


def check_qdmi_options(name: str, options: Mapping[str, Any], source: str) -> None:
    """Refuse inline credentials and a missing device id (when a resources file is read)."""
    for key in options:
        if key.lower() in INLINE_SECRET_KEYS:
            raise ResourceConfigError(
                f"{source}: a credential must not be written into the resources file "
                "(admins, backups and `qhpc resources` read it); put it in a file only "
                "the broker's user can read (chmod 600) and set token_file = "
                '"/absolute/path/to/that/file"',
                name,
                key,
            )
    device = options.get("device")
    if not isinstance(device, str) or not device:
        raise ResourceConfigError(
            f"{source}: 'device' (the QDMI device id, e.g. \"mqt.ddsim.default\") is required",
            name,
            "device",
        )


def _absolute(name: str, key: str, value: str) -> Path:
    path = Path(value)
    if not path.is_absolute():
        raise ResourceConfigError(
            f"must be an absolute path (the broker's working directory is not fixed), "
            f"got {value!r}",
            name,
            key,
        )
    return path


def check_driver(name: str, value: str) -> Path:
    """The driver library path, if it is an absolute path to a readable shared library."""
    path = _absolute(name, "driver", value)
    try:
        info = path.stat()
        with path.open("rb") as handle:
            head = handle.read(4)
    except OSError as exc:
        raise ResourceConfigError(
            f"cannot read the QDMI driver {path}: {exc.strerror or type(exc).__name__}",
            name,
            "driver",
        ) from None
    if not stat.S_ISREG(info.st_mode) or head not in _LIBRARY_MAGIC:
        raise ResourceConfigError(
            f"{path} is not a shared library (no ELF or Mach-O header); give the path of a "
            "QDMI driver library (a .so or .dylib)",
            name,
            "driver",
        )
    return path


def read_token_file(name: str, value: str) -> str:
    """The token kept in the file ``value``: its content, stripped of surrounding space.

    Errors name the file and the problem, never the content.
    """
    path = _absolute(name, "token_file", value)
    try:
        # O_NOFOLLOW-free on purpose: admins keep secrets behind symlinks (Kubernetes
        # mounts, /run/secrets); the mode checked is that of the file read.
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ResourceConfigError(f"{path} is not a regular file", name, "token_file")
            # One rule for every credential file qhpc reads (the vendor proxy's too):
            # owned by root or the broker's user, and nobody else's to read or write.
            if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ResourceConfigError(
                    f"the token file {path} is open to other users (mode "
                    f"{stat.S_IMODE(info.st_mode):04o}); chmod 600 it",
                    name,
                    "token_file",
                )
            if info.st_uid not in (0, os.geteuid()):
                raise ResourceConfigError(
                    f"the token file {path} is owned by uid {info.st_uid}, neither root "
                    "nor the broker's user",
                    name,
                    "token_file",
                )
            raw = handle.read(MAX_TOKEN_BYTES + 1)
    except OSError as exc:
        raise ResourceConfigError(
            f"cannot read the token file {path}: {exc.strerror or type(exc).__name__}",
            name,
            "token_file",
        ) from None
    if len(raw) > MAX_TOKEN_BYTES:
        raise ResourceConfigError(
            f"the token file {path} is larger than {MAX_TOKEN_BYTES} bytes; is it the right file?",
            name,
            "token_file",
        )
    try:
        token = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ResourceConfigError(
            f"the token file {path} is not UTF-8 text", name, "token_file"
        ) from None
    if not token:
        raise ResourceConfigError(f"the token file {path} is empty", name, "token_file")
    return token
