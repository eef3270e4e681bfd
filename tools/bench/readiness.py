"""Benchmark: how long `rayform apply` takes to notice that a change is served.

Run by scripts/bench-readiness on a `scripts/testcluster up --nodes` cluster: the
real KubeRay operator, a Ray head run by the node agent, Serve with the echo app.

One RayService is created once; each run then changes its model in place (the
case the operator reports Ready=True for before the new config is deployed) and
starts three things at once:
  * `rayform apply` with its readiness wait (port-forward through the API server);
  * `kubectl wait --for=jsonpath={.status.observedGeneration}=G`: what a user would
    script with kubectl (the baseline; it returns before the new model serves);
  * a poller that reads, every few milliseconds and straight from the pod's
    address, the RayService's status, the dashboard's deployed Serve config and a
    chat completion, and notes the first moment all of them say "new model served".
The figure that matters is rayform's own lag: from that moment to rayform returning.
rayform runs with its debug log on (RAYFORM_LOG=rayform=debug), whose timestamped
events split the lag in three: until its wait saw the service serving (the poll and
the look itself), until the state was written, and until the process was gone.
"""

import base64
import datetime
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import yaml

RUNS = int(os.environ.get("RUNS", "12"))
repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rayform = os.path.join(repo, "target", "release", "rayform")
kubectl = os.path.join(repo, "target", "py", "bin", "kubectl")
work = os.environ["BENCH_DIR"]
NS = "bench"

MANIFEST = """apiVersion: ray.io/v1
kind: RayService
metadata:
  name: bench
spec:
  serveConfigV2: |
    applications:
      - name: llm
        route_prefix: /
        import_path: echo_app:build
        args: {{model: {model}}}
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
name = "bench"
namespace = "bench"

[rayservice.bench]
manifest = "bench.yaml"

[wait.chat]
rayservice = "bench"
interval = "100ms"
timeout = "5m"
"""


class Api:
    """Just enough of a Kubernetes client: GET with the kubeconfig's client cert."""

    def __init__(self, kubeconfig):
        with open(kubeconfig) as f:
            config = yaml.safe_load(f)
        context = next(c["context"] for c in config["contexts"] if c["name"] == config["current-context"])
        cluster = next(c["cluster"] for c in config["clusters"] if c["name"] == context["cluster"])
        user = next(u["user"] for u in config["users"] if u["name"] == context["user"])
        self.server = cluster["server"]
        self.ctx = ssl.create_default_context(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        cert = tempfile.NamedTemporaryFile("wb", dir=work, delete=False)
        cert.write(base64.b64decode(user["client-certificate-data"]) + b"\n" + base64.b64decode(user["client-key-data"]))
        cert.close()
        self.ctx.load_cert_chain(cert.name)

    def get(self, path):
        with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=2) as r:
            return json.loads(r.read())


def http(url, body=None, timeout=0.5):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except Exception:
        return None, None


def condition(rs, kind):
    return next((c["status"] for c in rs.get("status", {}).get("conditions", []) if c["type"] == kind), None)


def served(api, model):
    """True when every sign says `model` is what the RayService serves."""
    rs = api.get(f"/apis/ray.io/v1/namespaces/{NS}/rayservices/bench")
    status = rs.get("status", {})
    if status.get("observedGeneration") != rs["metadata"]["generation"]:
        return False
    if condition(rs, "Ready") != "True" or condition(rs, "UpgradeInProgress") == "True":
        return False
    cluster = status.get("activeServiceStatus", {}).get("rayClusterName")
    pods = api.get(f"/api/v1/namespaces/{NS}/pods?labelSelector=ray.io/cluster={cluster},ray.io/node-type=head")
    ip = next((p["status"].get("podIP") for p in pods["items"] if p["status"].get("podIP")), None)
    if not ip:
        return False
    _, apps = http(f"http://{ip}:8265/api/serve/applications/")
    app = (apps or {}).get("applications", {}).get("llm", {})
    if app.get("status") != "RUNNING" or app.get("deployed_app_config", {}).get("args", {}).get("model") != model:
        return False
    code, answer = http(f"http://{ip}:8000/v1/chat/completions",
                        {"model": model, "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]})
    return code == 200 and answer.get("model") == model


def apply(model, stack):
    with open(os.path.join(work, "bench.yaml"), "w") as f:
        f.write(MANIFEST.format(model=model))
    # A file, not a pipe: the log is read once rayform is gone.
    log = open(os.path.join(work, f"{model}.log"), "w+")
    env = dict(os.environ, RAYFORM_LOG="rayform=debug")
    p = subprocess.Popen([rayform, "apply", stack, "--auto-approve"],
                         stdout=subprocess.DEVNULL, stderr=log, cwd=work, env=env)
    p.log = log
    return p


def logged(p, message):
    """The wall-clock time of rayform's first debug event `message` (its log's own timestamp)."""
    p.log.seek(0)
    for line in p.log:
        parts = line.split(None, 3)
        if len(parts) == 4 and parts[1] == "DEBUG" and parts[3].startswith(message):
            return datetime.datetime.fromisoformat(parts[0].replace("Z", "+00:00")).timestamp()
    return None


def said(p):
    p.log.seek(0)
    return p.log.read()


def run(api, stack, i):
    model = f"bench-{i}"
    generation = api.get(f"/apis/ray.io/v1/namespaces/{NS}/rayservices/bench")["metadata"]["generation"] + 1
    start = time.monotonic()
    ray = apply(model, stack)
    kube = subprocess.Popen([kubectl, "-n", NS, "wait", "rayservice/bench", "--timeout=300s",
                             f"--for=jsonpath={{.status.observedGeneration}}={generation}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen, checks = {}, []

    def poll():
        # The moment is the start of the first check that passes: conservative,
        # a check (four requests) takes tens of milliseconds.
        while "served" not in seen and time.monotonic() - start < 300:
            began, wall = time.monotonic(), time.time()
            try:
                if served(api, model):
                    seen["served"], seen["wall"] = began, wall
            except Exception:
                pass
            checks.append(time.monotonic() - began)
            time.sleep(0.005)

    poller = threading.Thread(target=poll)
    poller.start()
    done = {}
    for name, p in (("kubectl", kube), ("rayform", ray)):
        p.wait()
        done[name] = (time.monotonic(), p.returncode, time.time())
    poller.join()
    if done["rayform"][1] != 0 or "served" not in seen:
        sys.exit(f"run {i} failed: {said(ray)}")
    serving, written = logged(ray, "serving"), logged(ray, "state written")
    if serving is None or written is None:
        sys.exit(f"run {i}: rayform's log lacks its `serving` or `state written` event:\n{said(ray)}")
    return {
        "saw": serving - seen["wall"],
        "wrote": written - serving,
        "exit": done["rayform"][2] - written,
        "own": done["rayform"][0] - seen["served"],
        "rayform": done["rayform"][0] - start,
        "kubectl": done["kubectl"][0] - start,
        "served": seen["served"] - start,
        "check": statistics.median(checks),
    }


def main():
    api = Api(os.environ["KUBECONFIG"])
    subprocess.run([kubectl, "create", "namespace", NS], check=True, capture_output=True)
    stack = os.path.join(work, "bench.toml")
    with open(stack, "w") as f:
        f.write(STACK)
    first = apply("bench-0", stack)
    if first.wait() != 0:
        sys.exit(f"the first apply failed: {said(first)}")
    rows = [run(api, stack, i) for i in range(1, RUNS + 1)]
    for n, r in enumerate(rows, 1):
        print(f"run {n:2}: new model served {r['served']:6.3f} s   rayform returned {r['rayform']:6.3f} s"
              f"   kubectl wait returned {r['kubectl']:6.3f} s   served→rayform {r['own']:+.3f} s")
    own = [r["own"] for r in rows]
    early = sum(r["kubectl"] < r["served"] for r in rows)
    print(f"served → rayform apply returned: median {statistics.median(own):.3f} s, max {max(own):.3f} s,"
          f" min {min(own):.3f} s (n={len(own)})")
    for key, what in (("saw", "served → the wait saw it serving"), ("wrote", "the wait saw it → state written"),
                      ("exit", "state written → process gone")):
        print(f"  {what + ':':39} median {statistics.median(r[key] for r in rows) * 1000:4.0f} ms,"
              f" max {max(r[key] for r in rows) * 1000:4.0f} ms")
    print(f"one check of the poller:         median {statistics.median(r['check'] for r in rows) * 1000:.0f} ms")
    print(f"apply → new model served:        median {statistics.median(r['served'] for r in rows):.3f} s")
    print(f"apply → rayform returned:        median {statistics.median(r['rayform'] for r in rows):.3f} s")
    print(f"apply → kubectl wait returned:   median {statistics.median(r['kubectl'] for r in rows):.3f} s;"
          f" before the new model served in {early} of {len(rows)} runs")
    print(f"ratio of medians rayform / kubectl wait (time from apply): "
          f"{statistics.median(r['rayform'] for r in rows) / statistics.median(r['kubectl'] for r in rows):.2f}")
    subprocess.run([rayform, "destroy", stack, "--auto-approve"], cwd=work, capture_output=True, check=True)


if __name__ == "__main__":
    main()
