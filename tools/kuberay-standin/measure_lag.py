#!/usr/bin/env python3
"""Measure the KubeRay stand-in's lag (a measuring aid, not a test).

For N runs: create a RayService (the echo example, app args from --args), then record when
  * the app is RUNNING in Ray Serve (GET /api/serve/applications/ every 20 ms),
  * the RayService shows Ready=True in the API server (a `kubectl get --watch` stream),
and print both times from the create, and the lag between them. Deletes the RayService after
each run and waits until it is gone. Needs KUBECONFIG, RAYFORM_RAY_DASHBOARD and a running
stand-in (scripts/kuberay-standin start --working-dir tests/serve_apps).

  target/py/bin/python tools/kuberay-standin/measure_lag.py --runs 5
"""

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
import urllib.request

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
KUBECTL = os.path.join(REPO, "target", "py", "bin", "kubectl")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--name", default="lag")
    ap.add_argument("--args", default='{"model": "echo-7b"}', help="JSON app args")
    ap.add_argument("--dashboard", default=os.environ.get("RAYFORM_RAY_DASHBOARD"))
    a = ap.parse_args()

    doc = yaml.safe_load(open(os.path.join(HERE, "examples", "echo-rayservice.yaml")))
    doc["metadata"] = {"name": a.name, "namespace": a.namespace}
    cfg = yaml.safe_load(doc["spec"]["serveConfigV2"])
    cfg["applications"][0]["args"] = json.loads(a.args)
    doc["spec"]["serveConfigV2"] = yaml.safe_dump(cfg)
    app = cfg["applications"][0]["name"]

    lags = []
    for run in range(a.runs):
        ready_at = {}

        def read_watch():
            for line in watch.stdout:
                if line.strip() == "True" and "t" not in ready_at:
                    ready_at["t"] = time.monotonic()

        t0 = time.monotonic()
        subprocess.run([KUBECTL, "create", "-f", "-"], input=json.dumps(doc), text=True,
                       check=True, capture_output=True)
        # Started after the create: a watch on a named object that does not exist yet just fails.
        watch = subprocess.Popen(
            [KUBECTL, "get", "rayservices.ray.io", a.name, "-n", a.namespace, "--watch",
             "-o", "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        threading.Thread(target=read_watch, daemon=True).start()
        running = None
        while time.monotonic() - t0 < 120 and ("t" not in ready_at or running is None):
            if running is None:
                with urllib.request.urlopen(f"{a.dashboard}/api/serve/applications/", timeout=5) as r:
                    st = (json.load(r).get("applications") or {}).get(app, {}).get("status")
                if st == "RUNNING":
                    running = time.monotonic()
            time.sleep(0.02)
        watch.terminate()
        subprocess.run([KUBECTL, "delete", "rayservices.ray.io", a.name, "-n", a.namespace, "--wait=true"],
                       capture_output=True, timeout=60)
        if running is None or "t" not in ready_at:
            print(f"run {run + 1}: timed out (running={running is not None}, ready={'t' in ready_at})")
            continue
        lag = ready_at["t"] - running
        lags.append(lag)
        print(f"run {run + 1}: app RUNNING in Serve at {running - t0:6.2f}s, "
              f"Ready=True in the API at {ready_at['t'] - t0:6.2f}s, lag {lag * 1000:5.0f} ms", flush=True)
    if lags:
        print(f"lag over {len(lags)} runs: median {statistics.median(lags) * 1000:.0f} ms, "
              f"max {max(lags) * 1000:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
