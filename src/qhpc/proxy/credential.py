"""The vendor credential: read from its file, checked on every read, never shown.

The file is the admin's (root or the broker's user) and must be readable by its owner
alone; a file group or others may read is refused, not tightened — the broker does
not fix another party's secret behind their back, it says what is wrong. The file is
read again whenever it changes (inode, size or mtime), so an external refresher (e.g.
a timer that exchanges an IAM API key for a one-hour bearer token) rotates it without
a restart. One line, at most 16 KiB, no control characters (a line break inside a
header value would let it smuggle in further headers).
"""

from __future__ import annotations

import os
import stat
import threading

from qhpc.proxy.errors import CredentialError

MAX_CREDENTIAL_BYTES = 16 << 10


class CredentialFile:
    """One resource's credential file (``[resources.NAME.proxy] credential_file``)."""

    def __init__(self, path: str, resource: str) -> None:
        self.path = path
        self.resource = resource
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int, int] | None = None
        self._value: str | None = None

    def value(self) -> str:
        """The credential as it is in the file now; CredentialError (whose message names
        the file and the problem, never the contents) if it cannot be used."""
        with self._lock:
            try:
                fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError as exc:
                raise self._error(f"cannot open it: {exc.strerror}") from None
            try:
                info = os.fstat(fd)  # the file opened, not whatever the name points to next
                self._check(info)
                key = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
                if key != self._seen or self._value is None:
                    self._value = self._parse(os.read(fd, MAX_CREDENTIAL_BYTES + 1))
                    self._seen = key
                return self._value
            finally:
                os.close(fd)

    def _check(self, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise self._error("it is not a regular file")
        if info.st_uid not in (0, os.geteuid()):
            raise self._error(f"it is owned by uid {info.st_uid}, neither root nor the broker")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise self._error(f"group or others may use it (mode {mode:04o}); chmod 600 it")

    def _parse(self, raw: bytes) -> str:
        if len(raw) > MAX_CREDENTIAL_BYTES:
            raise self._error(f"it is larger than {MAX_CREDENTIAL_BYTES} bytes")
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise self._error("it is not UTF-8 text") from None
        if not text:
            raise self._error("it is empty")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
            raise self._error("it holds more than one line or control characters")
        return text

    def _error(self, why: str) -> CredentialError:
        return CredentialError(
            f"the vendor credential of resource {self.resource!r} ({self.path}) is unusable: {why}"
        )
