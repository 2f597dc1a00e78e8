"""The vendor proxy: a Slurm job's vendor SDK reaches its QPU's vendor through the broker.

The job holds only its session token; the broker adds the vendor credential, lets
through only what the resource's ``[resources.NAME.proxy]`` table allows (submissions
naming the session's backend, the session's own jobs, listed extras) and tells the
broker what to book (``qhpc.broker.VendorJobs``). Served by ``qhpc.api`` under
``/v1/proxy/NAME/…``. Public surface; other rooms import only these names.
"""

from qhpc.proxy.credential import MAX_CREDENTIAL_BYTES, CredentialFile
from qhpc.proxy.errors import (
    CredentialError,
    NoProxy,
    ProxyError,
    VendorTimeout,
    VendorUnreachable,
)
from qhpc.proxy.forward import REDACTED, VendorAnswer, VendorProxy
from qhpc.proxy.registry import VendorProxies
from qhpc.proxy.rules import (
    MAX_QUERY_CHARS,
    BadProxyRequest,
    Decision,
    Kind,
    check_submission,
    classify,
    job_id_of,
    split_path,
    usage_of,
)

__all__ = [
    "MAX_CREDENTIAL_BYTES",
    "MAX_QUERY_CHARS",
    "REDACTED",
    "BadProxyRequest",
    "CredentialError",
    "CredentialFile",
    "Decision",
    "Kind",
    "NoProxy",
    "ProxyError",
    "VendorAnswer",
    "VendorProxies",
    "VendorProxy",
    "VendorTimeout",
    "VendorUnreachable",
    "check_submission",
    "classify",
    "job_id_of",
    "split_path",
    "usage_of",
]
