"""Benchmark: time from a route appearing in Ray Serve to `rayform apply` returning.

Run by scripts/bench-readiness, which starts a local control plane, Ray Serve and
the KubeRay stand-in and exports KUBECONFIG, RAYFORM_SERVE_URL, RAYFORM_RAY_DASHBOARD.

Each run creates a fresh namespace and a RayService whose app has a unique name,
then starts three things at once: `rayform apply` (with its readiness wait),
`kubectl wait --for=condition=Ready` on the same RayService (the baseline: what a
user would script with kubectl), and a poller that GETs /-/routes every 5 ms and
notes when the run's app is first listed. Both waits are measured from that
moment. The ratio compares rayform (status + route + real request) with kubectl's
condition wait alone, on the same machine in the same run.
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.request

RUNS = int(os.environ.get("RUNS", "12"))
repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rayform = os.path.join(repo, "target", "release", "rayform")
kubectl = os.path.join(repo, "target", "py", "bin", "kubectl")
serve_url = os.environ["RAYFORM_SERVE_URL"]
work = os.environ["BENCH_DIR"]

MANIFEST = """apiVersion: ray.io/v1
kind: RayService
metadata:
  name: bench
spec:
  serveConfigV2: |
    applications:
      - name: {app}
        route_prefix: /
        import_path: echo_app:build
        args: {{model: bench}}
  rayClusterConfig:
    rayVersion: "2.60.0"
    headGroupSpec:
      rayStartParams: {{}}
      template:
        spec:
          containers:
            - name: ray-head
              image: rayproject/ray:2.60.0
"""

STACK = """[stack]
name = "bench{i}"
namespace = "bench{i}"

[rayservice.bench]
manifest = "bench{i}.yaml"

[wait.chat]
rayservice = "bench"
url = "{url}"
timeout = "3m"
"""


def routes():
    try:
        with urllib.request.urlopen(serve_url + "/-/routes", timeout=0.5) as r:
            return json.loads(r.read() or b"{}")
    except Exception:
        return {}


def run(i):
    app = f"app{i}-{int(time.time())}"
    ns = f"bench{i}"
    subprocess.run([kubectl, "create", "namespace", ns], check=True, capture_output=True)
    with open(os.path.join(work, f"bench{i}.yaml"), "w") as f:
        f.write(MANIFEST.format(app=app))
    stack = os.path.join(work, f"bench{i}.toml")
    with open(stack, "w") as f:
        f.write(STACK.format(i=i, url=serve_url))
    seen = {}

    def poll():
        while "route" not in seen and time.monotonic() - start < 180:
            if app in routes().values():
                seen["route"] = time.monotonic()
            time.sleep(0.005)

    def probe():
        # When could a real request first be answered? (a request during init hangs: short deadline)
        while "route" not in seen and time.monotonic() - start < 180:
            time.sleep(0.005)
        while "probe" not in seen and time.monotonic() - start < 180:
            try:
                with urllib.request.urlopen(serve_url + "/v1/models", timeout=0.2) as r:
                    if r.status == 200:
                        seen["probe"] = time.monotonic()
            except Exception:
                time.sleep(0.005)

    start = time.monotonic()
    poller = threading.Thread(target=poll)
    poller.start()
    prober = threading.Thread(target=probe)
    prober.start()
    state = os.path.join(work, f"bench{i}.json")
    ray = subprocess.Popen([rayform, "apply", stack, "--state", state, "--auto-approve"],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work)
    # kubectl wait needs the object to exist; it is created within milliseconds.
    while subprocess.run([kubectl, "-n", ns, "get", "rayservice", "bench"], capture_output=True).returncode != 0:
        time.sleep(0.02)
    kube = subprocess.Popen([kubectl, "-n", ns, "wait", "--for=condition=Ready", "rayservice/bench", "--timeout=180s"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = {}

    def reap(name, p):
        p.wait()
        done[name] = (time.monotonic(), p.returncode)

    threads = [threading.Thread(target=reap, args=("rayform", ray)), threading.Thread(target=reap, args=("kubectl", kube))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    poller.join()
    prober.join()
    if done["rayform"][1] != 0 or "route" not in seen:
        sys.exit(f"run {i} failed: {ray.stderr.read().decode()}")
    r = done["rayform"][0] - seen["route"]
    k = done["kubectl"][0] - seen["route"]
    # rayform's own lag: from the moment every condition held (Serve answers and
    # KubeRay's Ready, as seen by kubectl wait) to rayform returning.
    own = done["rayform"][0] - max(seen.get("probe", 0), done["kubectl"][0])
    subprocess.run([rayform, "destroy", stack, "--state", state, "--auto-approve"], cwd=work, capture_output=True, check=True)
    return r, k, own, seen.get("probe", 0) - seen["route"]


def main():
    rows = [run(i) for i in range(1, RUNS + 1)]
    rf = [r[0] for r in rows]
    kw = [r[1] for r in rows]
    own = [r[2] for r in rows]
    answer = [r[3] for r in rows]
    for n, (r, k, o, a) in enumerate(rows, 1):
        print(f"run {n:2}: route→rayform {r:6.3f} s   route→kubectl wait {k:6.3f} s   route→first 200 {a:6.3f} s   all conditions→rayform {o:+.3f} s")
    print(f"rayform apply returned after the route appeared: median {statistics.median(rf):.3f} s, max {max(rf):.3f} s, min {min(rf):.3f} s (n={len(rf)})")
    print(f"kubectl wait --for=condition=Ready:             median {statistics.median(kw):.3f} s, max {max(kw):.3f} s, min {min(kw):.3f} s")
    print(f"route listed -> first real request answered:   median {statistics.median(answer):.3f} s, max {max(answer):.3f} s (the replica starting; no tool can be faster)")
    print(f"every condition held -> rayform returned:      median {statistics.median(own):.3f} s, max {max(own):.3f} s")
    print(f"ratio of medians rayform / kubectl wait: {statistics.median(rf) / statistics.median(kw):.2f}")


if __name__ == "__main__":
    main()
