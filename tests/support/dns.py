"""A resolver for the egress policy (``lx_platform.egress.Resolver``) that tests control."""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

from lx_platform.egress import Resolver, system_resolver

Answers = Sequence[str] | Callable[[int], Sequence[str]]


class StubDns:
    """Names from ``table`` (a list of addresses, or a function of how many times the
    name has been asked, for answers that change: DNS rebinding with TTL 0); any other
    name from ``fallback`` (the system's resolver unless ``None``: then it does not
    resolve)."""

    def __init__(
        self, table: Mapping[str, Answers], *, fallback: Resolver | None = system_resolver
    ) -> None:
        self.table = dict(table)
        self.fallback = fallback
        self.asked: Counter[str] = Counter()

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked[host] += 1
        answers = self.table.get(host)
        if answers is None:
            if self.fallback is None:
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return await self.fallback(host, port)
        return answers(self.asked[host]) if callable(answers) else list(answers)
