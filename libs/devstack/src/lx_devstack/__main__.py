"""``python -m lx_devstack run|stop|status``: the whole stack for a person (make run)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from lx_devstack import stack as st
from lx_devstack.infra import local_kafka, local_postgres, start_infra
from lx_devstack.paths import pid_alive, read_pidfile


def _print(text: str = "") -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def run() -> int:
    t0 = time.monotonic()
    _print("Starting Kafka (KRaft) and PostgreSQL…")
    infra = start_infra()
    _print(f"  kafka {infra.kafka_bootstrap}, postgres ready ({time.monotonic() - t0:.1f}s)")
    stack = st.Stack(infra)
    pidfile = stack.layout.run_folder / "stack.pid"
    pidfile.write_text(str(os.getpid()))
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        _print("Starting services…")
        stack.start_all()
        demo = st.load_or_seed_demo(stack)
        layout = stack.layout
        lead = json.dumps(st.DEMO_LEAD)
        _print(f"\nLeadExchange is up in {time.monotonic() - t0:.1f}s.\n")
        for name in st.SERVICES:
            _print(f"  {name:<10} {layout.url(name)}/docs")
        _print(f"  {'buyer':<10} {layout.buyer_url}/received   (the demo buyer's inbox)")
        _print(f"\nOperator token: {layout.operator_token}")
        _print("\nPost a demo lead:\n")
        _print(
            f"  curl -s -X POST {layout.url('ingest')}/v1/leads \\\n"
            f"    -H 'Authorization: Bearer {demo.api_key}' \\\n"
            f"    -H 'Content-Type: application/json' \\\n"
            f"    -d '{lead}'"
        )
        _print("\nThen follow it (replace LEAD_ID):\n")
        _print(
            f"  curl -s {layout.url('admin')}/v1/leads/LEAD_ID/trace "
            f"-H 'Authorization: Bearer {layout.operator_token}'"
        )
        _print(
            f"  curl -s '{layout.url('billing')}/v1/accounts/{demo.account_id}/statement"
            f"?month={time.strftime('%Y-%m', time.gmtime())}' "
            f"-H 'Authorization: Bearer {layout.operator_token}'"
        )
        _print(
            f"  curl -s '{layout.url('analytics')}/v1/stats/hourly?campaign_id="
            f"{demo.campaign_id}' -H 'Authorization: Bearer {layout.operator_token}'"
        )
        _print("\nLogs: .local/logs/. Ctrl-C (or `make stop`) stops everything.")
        while not stop.is_set():
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        _print("\nStopping…")
        stack.stop_all()
        infra.stop()
        pidfile.unlink(missing_ok=True)
        _print("Stopped.")
    return 0


def stop_all() -> int:
    layout = st.StackLayout()
    runner = read_pidfile(layout.run_folder / "stack.pid")
    if runner is not None and pid_alive(runner):
        os.kill(runner, signal.SIGTERM)  # `make run` stops its own children in order
        deadline = time.monotonic() + 60
        while pid_alive(runner) and time.monotonic() < deadline:
            time.sleep(0.2)
    for name in (*st.SERVICES, "buyer"):
        st.ManagedProcess(name, [], {}, layout).stop()
    local_kafka().stop()
    local_postgres().stop()
    _print("Stopped.")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lx_devstack")
    parser.add_argument("command", choices=["run", "stop"])
    args = parser.parse_args(argv)
    return run() if args.command == "run" else stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
