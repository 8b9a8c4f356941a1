"""An httpx transport that connects only where ``EgressPolicy`` allows, to the address
it checked.

Checking a URL and then letting the HTTP client resolve its host again is the flaw that
defeated "resolve, then check" SSRF guards (CVAT #6362): a DNS answer with TTL 0 can be
public for the check and 127.0.0.1 for the connection. Here the check sits where the
socket is opened, in httpcore's network backend: the host is resolved once, every answer
is checked, and the TCP connection goes to a checked IP literal. TLS is unchanged:
httpcore still verifies the certificate and sends SNI for the URL's host name, and the
Host header is the URL's, because only the socket's address is pinned.

Redirects are the client's business: delivery's client never follows them.
"""

from __future__ import annotations

import ssl
import typing

import httpcore
import httpx

from lx_platform.egress import EgressPolicy, UnresolvableHostError

# httpcore's SOCKET_OPTION, which it does not export.
SocketOption = (
    tuple[int, int, int] | tuple[int, int, bytes | bytearray] | tuple[int, int, None, int]
)


class PinnedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the egress policy in ``connect_tcp``."""

    def __init__(self, policy: EgressPolicy, inner: httpcore.AsyncNetworkBackend | None = None):
        self.policy = policy
        # Delivery runs on asyncio, which anyio drives (httpcore's default there too).
        self.inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            # Raises EgressRefusedError (not an httpcore error: httpx lets it through
            # unchanged, and delivery ends the try for good) if any address is refused.
            addresses = await self.policy.addresses(host, port)
        except UnresolvableHostError as exc:
            # Possibly a passing DNS failure: a connection error, retried like one.
            raise httpcore.ConnectError(exc.detail) from exc
        options = list(socket_options or ())
        last: Exception | None = None
        for addr in addresses:  # every one checked; the first that answers wins
            try:
                stream = await self.inner.connect_tcp(
                    str(addr),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
                continue
            return stream
        assert last is not None
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        socket_options: typing.Iterable[SocketOption] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("unix sockets are not an egress destination")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class PinnedTransport(httpx.AsyncHTTPTransport):
    """``httpx.AsyncHTTPTransport`` whose connection pool uses ``PinnedBackend``.

    httpx builds its httpcore pool without a way to pass a network backend, so the pool
    is built again here with the same settings (no proxy: ``trust_env`` is off, an
    ``HTTPS_PROXY`` in the environment must not reroute buyer traffic around the check).
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        limits: httpx.Limits = httpx.Limits(),  # noqa: B008 - immutable
        verify: ssl.SSLContext | bool = True,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        super().__init__(verify=verify, limits=limits, trust_env=False)
        self.backend = PinnedBackend(policy, inner)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            network_backend=self.backend,
        )


def buyer_client(
    policy: EgressPolicy, *, max_connections: int, user_agent: str
) -> httpx.AsyncClient:
    """The client every call to a buyer's endpoint goes through (posts and pings).

    Every connection passes the egress policy and goes to the address it checked;
    redirects are never followed (a buyer endpoint answers itself or fails, and a
    redirect could point anywhere); no proxy or netrc from the environment.
    """
    limits = httpx.Limits(
        max_connections=max_connections, max_keepalive_connections=max_connections
    )
    return httpx.AsyncClient(
        transport=PinnedTransport(policy, limits=limits),
        follow_redirects=False,
        trust_env=False,
        headers={"user-agent": user_agent},
    )


async def read_capped(response: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of a buyer's answer, and whether there was more: an
    endpoint may answer without end, and memory is the platform's, not the buyer's."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
    return bytes(body), False
