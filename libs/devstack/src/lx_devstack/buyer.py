"""A fake buyer: a real HTTP server on loopback that records every post it gets.

Each buyer is a path, ``/buyers/<name>/<mode>``; the mode says how it answers:
``accept``, ``reject``, ``error`` (503), ``flaky`` (503 on a delivery id's first
try, then accept), ``slow`` (waits ``?ms=`` then accepts; with ``?max_ms=``, a wait
drawn uniformly between the two), ``hang`` (never answers within any sane timeout),
``reset`` (reads the request, then resets the connection without answering). The
faults ``error``, ``hang`` and ``reset`` take ``?p=``, the chance (default 1) that a
request meets the fault; the others are accepted. Each received row says what the
buyer did (``answer``: accepted, rejected, error, hang, reset, bid, nobid). For pings,
``bid`` waits ``?ms=`` (default 0) and then bids ``?price=`` (default 10.00) with a bid
id (``?bid_id=``, default ``<name>-<n>``):
``{"price": "40.00", "bid_id": "..."}``; ``nobid`` declines (``{"price": null}``).
``GET /received`` lists what arrived, for tests and demos.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import struct
import time
from collections import Counter
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

DELIVERY_ID_HEADER = "x-leadexchange-delivery-id"
FAULTS = ("error", "hang", "reset")


def _answer(mode: str, query: dict[str, str], first_try: bool) -> str:
    """What the buyer does with this request, decided when it arrives."""
    if mode in ("bid", "nobid"):
        return mode
    if mode == "reject":
        return "rejected"
    if mode in FAULTS:
        chance = float(query.get("p", "1"))
        return mode if random.random() < chance else "accepted"
    if mode == "flaky" and first_try:
        return "error"
    return "accepted"


def _reset_connection(request: Request) -> bool:
    """Abort the request's TCP connection with a RST, no answer sent.

    ASGI gives an app no handle on its connection; uvicorn's ``receive`` is a method of
    its request cycle, which holds the transport. SO_LINGER 0 then turns the close into
    a reset (ECONNRESET at the client) rather than an orderly FIN. False if the server
    is not one where this works (the caller then answers 500).
    """
    cycle = getattr(request.receive, "__self__", None)
    transport = getattr(cycle, "transport", None)
    if transport is None:
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()
    return True


def create_buyer_app() -> Starlette:
    received: list[dict[str, Any]] = []
    tries: Counter[str] = Counter()

    async def post(request: Request) -> JSONResponse:
        name, mode = request.path_params["name"], request.path_params["mode"]
        body = await request.body()
        try:
            lead = json.loads(body)
        except ValueError:
            return JSONResponse({"status": "rejected", "reason": "not json"}, status_code=400)
        delivery_id = request.headers.get(DELIVERY_ID_HEADER, "")
        tries[delivery_id] += 1
        query = dict(request.query_params)
        answer = _answer(mode, query, tries[delivery_id] == 1)
        received.append(
            {
                "buyer": name,
                "mode": mode,
                "delivery_id": delivery_id,
                "lead_id": lead.get("lead_id"),
                "at": time.time(),
                "answer": answer,
                "lead": lead,
            }
        )
        if mode == "bid":
            await asyncio.sleep(int(query.get("ms", "0")) / 1000)
            bid_id = query.get("bid_id") or f"{name}-{len(received)}"
            price = query.get("price", "10.00")
            return JSONResponse({"price": price, "bid_id": bid_id})
        if mode == "nobid":
            return JSONResponse({"price": None, "reason": "not bidding on this one"})
        if answer == "rejected":
            return JSONResponse({"status": "rejected", "reason": "not buying this one"})
        if answer == "error":
            return JSONResponse({"status": "error"}, status_code=503)
        if answer == "reset" and _reset_connection(request):
            # The connection is gone; what is returned here is never sent.
            return JSONResponse({"status": "reset"}, status_code=500)
        if answer == "reset":
            return JSONResponse({"status": "error"}, status_code=500)
        if mode == "slow":
            low = int(query.get("ms", "200"))
            wait_ms = random.uniform(low, int(query.get("max_ms", str(low))))
            await asyncio.sleep(wait_ms / 1000)
        if answer == "hang":
            await asyncio.sleep(3600)
        return JSONResponse({"status": "accepted", "buyer_lead_id": f"{name}-{len(received)}"})

    async def list_received(request: Request) -> JSONResponse:
        buyer = request.query_params.get("buyer")
        rows = [r for r in received if buyer in (None, r["buyer"])]
        if request.query_params.get("full") != "1":
            rows = [{k: v for k, v in r.items() if k != "lead"} for r in rows]
        return JSONResponse(rows)

    async def reset(_: Request) -> JSONResponse:
        received.clear()
        tries.clear()
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/buyers/{name}/{mode}", post, methods=["POST"]),
            Route("/received", list_received, methods=["GET"]),
            Route("/received", reset, methods=["DELETE"]),
            Route("/health", lambda _: JSONResponse({"status": "ok"}), methods=["GET"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="LeadExchange fake buyer (loopback by default)")
    # A container must listen on all its interfaces to be reachable from the others.
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    args = parser.parse_args(argv)
    uvicorn.run(create_buyer_app(), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
