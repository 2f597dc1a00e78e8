"""Forwarding one request to a vendor: the credential in, hop-by-hop out, budgets both ways.

What reaches the vendor is built, not copied: the path the rules accepted, the query
string, the client headers named in ``pass_headers`` (``Accept`` and ``Content-Type``
by default — never the client's ``Authorization``, cookies or hop-by-hop headers), the
fixed ``headers`` of the configuration and the credential header. What comes back is
filtered the same way: the status, the body and the headers named in
``pass_response_headers`` (``Content-Type``, ``Retry-After``); ``Set-Cookie`` never
passes, since a vendor session cookie would let the job act with the broker's
identity without the proxy.

Deliberate refusals (HTTP 502 with a problem body): a redirect (never followed: it
could take the credential elsewhere), a body over ``max_response_bytes`` (counted
after decompression, so a gzip bomb stops at the budget), a 401 from the vendor (the
broker's credential is refused: the operators must renew it; the job's own token was
fine). A connection that fails is 502, one slower than ``timeout`` for the whole
exchange 504. Should the vendor ever echo the credential, it is cut out of the body
and headers before they leave the broker.

One ``httpx.AsyncClient`` per resource and event loop (connection limits, no
environment proxies, no ``.netrc``); closed by :meth:`VendorProxy.aclose`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass

import anyio
import httpx

import qhpc
from qhpc.proxy.credential import CredentialFile
from qhpc.proxy.errors import VendorTimeout, VendorUnreachable
from qhpc.proxy.rules import Decision
from qhpc.resources import ProxySpec

log = logging.getLogger(__name__)

REDACTED = b"[redacted]"


@dataclass(frozen=True)
class VendorAnswer:
    """What the vendor answered, filtered for the client."""

    status: int
    headers: dict[str, str]
    body: bytes


class VendorProxy:
    """One resource's way to its vendor (see the module docstring)."""

    def __init__(self, spec: ProxySpec) -> None:
        self.spec = spec
        self.credential = CredentialFile(spec.credential_file, spec.resource)
        self._client: httpx.AsyncClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def check(self) -> None:
        """Reads the credential now (CredentialError if it cannot be used): at start-up,
        so a broken file is found before the first job needs it."""
        self.credential.value()

    def _client_for_loop(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            # A client's connections belong to the loop that opened them.
            spec = self.spec
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(spec.timeout, connect=spec.connect_timeout),
                limits=httpx.Limits(
                    max_connections=spec.max_connections,
                    max_keepalive_connections=spec.max_connections,
                ),
                follow_redirects=False,
                trust_env=False,
                proxy=spec.http_proxy,
                headers={"User-Agent": f"qhpc-proxy/{qhpc.__version__}"},
            )
            self._loop = loop
        return self._client

    def outgoing_headers(self, client_headers: Mapping[str, str], secret: str) -> dict[str, str]:
        """The request headers the vendor gets, names in lower case so that none can appear
        twice (the credential last: nothing overrides it)."""
        headers = {
            name: value
            for name in self.spec.pass_headers
            if (value := client_headers.get(name)) is not None
        }
        headers.update((name.lower(), value) for name, value in self.spec.headers)
        headers[self.spec.auth_header.lower()] = self.spec.auth_header_value(secret)
        return headers

    async def forward(
        self, method: str, decision: Decision, query: str,
        client_headers: Mapping[str, str], body: bytes,
    ) -> VendorAnswer:  # fmt: skip
        """Send the request to the vendor and read its answer within the budgets."""
        spec = self.spec
        # Read once a request: the same credential goes out and is cut out of the answer.
        secret = self.credential.value()
        headers = self.outgoing_headers(client_headers, secret)
        url = httpx.URL(spec.base_url + decision.path)
        if query:
            url = url.copy_with(query=query.encode("ascii", "replace"))
        client = self._client_for_loop()
        what = f"the vendor of resource {spec.resource!r}"
        try:
            with anyio.fail_after(spec.timeout):
                request = client.build_request(method, url, headers=headers, content=body)
                response = await client.send(request, stream=True)
                try:
                    content = await self._read(response, what)
                finally:
                    await response.aclose()
        except (TimeoutError, httpx.TimeoutException) as exc:
            log.warning("%s %s %s: %s", what, method, decision.path, type(exc).__name__)
            raise VendorTimeout(f"{what} did not answer within {spec.timeout:g} s") from None
        except httpx.HTTPError as exc:
            log.warning("%s %s %s failed: %r", what, method, decision.path, exc)
            raise VendorUnreachable(
                f"{what} could not be reached ({type(exc).__name__}); retry later"
            ) from None
        return self._answer(response, content, what, secret)

    async def _read(self, response: httpx.Response, what: str) -> bytes:
        limit = self.spec.max_response_bytes
        declared = response.headers.get("content-length", "")
        if (
            declared.isdigit()
            and int(declared) > limit
            and not response.headers.get("content-encoding")
        ):
            raise VendorUnreachable(f"{what} answered more than {limit} bytes (the budget)")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():  # decoded: the budget counts what expands
            size += len(chunk)
            if size > limit:
                raise VendorUnreachable(f"{what} answered more than {limit} bytes (the budget)")
            chunks.append(chunk)
        return b"".join(chunks)

    def _answer(
        self, response: httpx.Response, content: bytes, what: str, secret: str
    ) -> VendorAnswer:
        status = response.status_code
        if 300 <= status < 400:
            log.warning("%s answered a redirect (%d); not followed", what, status)
            raise VendorUnreachable(f"{what} answered a redirect, which the proxy does not follow")
        if status == 401:
            log.error(
                "%s refused the broker's credential (%s): renew it", what,
                self.spec.credential_file,
            )  # fmt: skip
            raise VendorUnreachable(
                f"{what} refused the broker's credential for it; the operators must renew it"
            )
        if secret.encode() in content:
            log.error("%s echoed the credential in its answer; cut out", what)
            content = content.replace(secret.encode(), REDACTED)
        headers = {
            name: value.replace(secret, REDACTED.decode())
            for name in self.spec.pass_response_headers
            if (value := response.headers.get(name)) is not None
        }
        return VendorAnswer(status, headers, content)

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None and self._loop is asyncio.get_running_loop():
            await client.aclose()
