"""The vendor proxies of a broker's resources, built once when the API starts."""

from __future__ import annotations

import logging

from qhpc.proxy.errors import NoProxy
from qhpc.proxy.forward import VendorProxy
from qhpc.resources import ResourceRegistry

log = logging.getLogger(__name__)


class VendorProxies:
    """Resource name → its :class:`VendorProxy`, for the resources that configure one."""

    def __init__(self, proxies: dict[str, VendorProxy]) -> None:
        self._proxies = proxies

    @classmethod
    def of(cls, registry: ResourceRegistry) -> VendorProxies:
        """The proxies ``registry`` configures; each credential is read now, so an unusable
        file fails the start (CredentialError naming the file) rather than a job later."""
        proxies = {}
        for name in registry.names():
            spec = registry.spec(name).proxy
            if spec is not None:
                proxy = VendorProxy(spec)
                proxy.check()
                proxies[name] = proxy
                log.info("vendor proxy for %s: /v1/proxy/%s/… → its vendor", name, name)
        return cls(proxies)

    def names(self) -> list[str]:
        return sorted(self._proxies)

    def get(self, resource: str) -> VendorProxy:
        try:
            return self._proxies[resource]
        except KeyError:
            raise NoProxy(f"resource {resource!r} has no vendor proxy") from None

    async def aclose(self) -> None:
        for proxy in self._proxies.values():
            await proxy.aclose()
