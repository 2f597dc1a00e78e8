"""The vendor proxy's typed errors; the API maps each to its HTTP status.

Messages name the resource and what went wrong in words, never the vendor's URL, its
answer or the credential: the operators find those in the broker's log.
"""

from __future__ import annotations

from qhpc.errors import QhpcError


class ProxyError(QhpcError):
    """Base of the vendor proxy's errors."""


class NoProxy(ProxyError):
    """The resource has no vendor proxy configured (HTTP 404)."""


class VendorUnreachable(ProxyError):
    """The vendor could not be reached, or answered something the proxy will not pass on
    (a redirect, a body over the budget, a refusal of the broker's credential) (HTTP 502)."""


class VendorTimeout(ProxyError):
    """The vendor did not answer in time (HTTP 504)."""


class CredentialError(ProxyError):
    """The broker's vendor credential cannot be used: missing, empty, open to group or
    others, owned by someone else (HTTP 503; the detail goes to the log only)."""
