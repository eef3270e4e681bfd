#!/usr/bin/env python3
"""Print the timeline of a Ray Serve endpoint while an app deploys (a measuring aid, not a test).

Polls GET /-/routes, /-/healthz and a probe path (default /v1/models) every --interval seconds,
each with its own short client timeout, and prints a line whenever one of the three changes.
Optionally PUTs a deploy body to the dashboard first (t=0 is the PUT), and stops when the probe
answers 200 or after --timeout.

  target/py/bin/python tools/serve_timeline.py --serve "$RAYFORM_SERVE_URL" \
      --dashboard "$RAYFORM_RAY_DASHBOARD" --put body.json [--app llm]
"""

import argparse
import json
import socket
import sys
import time
import urllib.error
import urllib.request


def get(url: str, timeout: float) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return f"{r.status} {r.read().decode(errors='replace')[:80]}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode(errors='replace')[:80]}"
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            return "connection refused"
        if isinstance(reason, (socket.timeout, TimeoutError)):
            return "client timeout (hangs)"
        return f"error {reason}"
    except (socket.timeout, TimeoutError):
        return "client timeout (hangs)"
    except ConnectionResetError:
        return "connection reset"


def app_status(dashboard: str, app: str) -> str:
    try:
        with urllib.request.urlopen(f"{dashboard}/api/serve/applications/", timeout=2) as r:
            apps = json.load(r).get("applications", {})
    except Exception as e:  # noqa: BLE001 - measuring aid
        return f"dashboard error {e}"
    a = apps.get(app)
    if not a:
        return "absent"
    deps = ",".join(f"{n}={d.get('status')}" for n, d in (a.get("deployments") or {}).items())
    return f"{a.get('status')} [{deps}]"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", required=True)
    ap.add_argument("--dashboard")
    ap.add_argument("--put", help="JSON file PUT to <dashboard>/api/serve/applications/ at t=0")
    ap.add_argument("--app", default="llm")
    ap.add_argument("--probe", default="/v1/models")
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--client-timeout", type=float, default=0.5)
    ap.add_argument("--timeout", type=float, default=120)
    a = ap.parse_args()

    t0 = time.monotonic()
    if a.put:
        body = open(a.put, "rb").read()
        req = urllib.request.Request(
            f"{a.dashboard}/api/serve/applications/",
            data=body,
            method="PUT",
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            print(f"{time.monotonic() - t0:7.2f}s PUT -> {r.status}", flush=True)
    last = None
    while time.monotonic() - t0 < a.timeout:
        state = (
            get(a.serve + "/-/routes", a.client_timeout),
            get(a.serve + "/-/healthz", a.client_timeout),
            get(a.serve + a.probe, a.client_timeout),
            app_status(a.dashboard, a.app) if a.dashboard else "",
        )
        if state != last:
            print(
                f"{time.monotonic() - t0:7.2f}s routes={state[0]!r} healthz={state[1]!r} "
                f"probe={state[2]!r} app={state[3]}",
                flush=True,
            )
            last = state
        if state[2].startswith("200"):
            return 0
        time.sleep(a.interval)
    print(f"{time.monotonic() - t0:7.2f}s timeout", flush=True)
    return 1


if __name__ == "__main__":
    sys.exit(main())
