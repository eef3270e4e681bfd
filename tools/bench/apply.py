"""Benchmark: `rayform apply` of many objects against `kubectl apply --server-side`.

Run by scripts/bench-apply (which starts a local control plane and exports KUBECONFIG).
Each run uses fresh namespaces, one per contender, so each creates OBJECTS
ConfigMaps (default 1000) from nothing, then updates every one of them (a new
value in each). rayform's figure is the whole `rayform apply` (it reads the
stack, observes the cluster, plans and applies), with the state in a file, in
the cluster, and with a server dry run of every change; kubectl's is
`kubectl apply --server-side -f DIR`. Runs alternate who goes first.
Also measured: the peak resident memory of `rayform plan` of the created stack,
and crash safety: KILLS times (default 20; KILLS_K8S times with the kubernetes
backend, default 5, each waiting out the killed run's Lease) an apply of
KILL_OBJECTS ConfigMaps (default 400) is killed with SIGKILL at a random
moment after its first object is created, then applied again; converged
means the next plan finds nothing to do, every object exists and the state
records each one.
"""

import json
import os
import random
import signal
import statistics
import subprocess
import time

N = int(os.environ.get("OBJECTS", "1000"))
RUNS = int(os.environ.get("RUNS", "3"))
repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rayform = os.environ.get("RAYFORM", os.path.join(repo, "target", "release", "rayform"))
kubectl = os.path.join(repo, "target", "py", "bin", "kubectl")
work = os.environ["BENCH_DIR"]


def timed(cmd, env=None):
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=work, capture_output=True, env=dict(os.environ, **(env or {})))
    elapsed = time.monotonic() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
    return elapsed


def peak_rss_kib(cmd):
    p = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         env=dict(os.environ, RAYFORM_BACKEND="file"))
    _, status, usage = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 2):
        raise SystemExit(f"{cmd} failed ({code}): {p.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss


def write_rayform(name, version):
    lines = [f'[stack]\nname = "{name}"\nnamespace = "{name}"\n']
    for i in range(N):
        lines.append(f'[manifest.cm{i}]\nobject = {{ apiVersion = "v1", kind = "ConfigMap", data = {{ index = "{i}", version = "{version}" }} }}\n')
    with open(os.path.join(work, f"{name}.toml"), "w") as f:
        f.write("\n".join(lines))


def write_kubectl(ns, version):
    d = os.path.join(work, ns)
    os.makedirs(d, exist_ok=True)
    for i in range(N):
        with open(os.path.join(d, f"cm{i}.yaml"), "w") as f:
            f.write(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm{i}\n  namespace: {ns}\n"
                    f"data:\n  index: \"{i}\"\n  version: \"{version}\"\n")
    return d


def write_stack(name, ns, count):
    lines = [f'[stack]\nname = "{name}"\nnamespace = "{ns}"\n']
    for i in range(count):
        lines.append(f'[manifest.cm{i}]\nobject = {{ apiVersion = "v1", kind = "ConfigMap", data = {{ index = "{i}" }} }}\n')
    with open(os.path.join(work, f"{name}.toml"), "w") as f:
        f.write("\n".join(lines))


def count_config_maps(ns):
    out = subprocess.run([kubectl, "get", "configmaps", "-n", ns, "-o", "name"], capture_output=True, text=True, check=True)
    return len([l for l in out.stdout.splitlines() if l.startswith("configmap/cm")])


def kill_and_converge(k, backend):
    """One kill: returns (objects live when the kill landed, converged?)."""
    n = int(os.environ.get("KILL_OBJECTS", "400"))
    name, ns = f"kill{backend[0]}{k}", f"kill{backend[0]}{k}"
    subprocess.run([kubectl, "create", "namespace", ns], check=True, capture_output=True)
    write_stack(name, ns, n)
    env = dict(os.environ, RAYFORM_BACKEND=backend)
    cmd = [rayform, "apply", f"{name}.toml", "--auto-approve", "--no-wait"]
    # The kill lands at a random moment after the first object is created,
    # within about the time the rest takes (a millisecond an object), so it
    # falls mid-apply whatever the size, not during the plan before it.
    progress = os.path.join(work, f"{name}.progress")
    with open(progress, "w") as err:
        p = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=err)
        started = time.monotonic()
        while p.poll() is None and time.monotonic() - started < 60:
            with open(progress) as seen:
                if ": Created" in seen.read():
                    break
            time.sleep(0.01)
        time.sleep(random.uniform(0, 0.001 * n))
        p.send_signal(signal.SIGKILL)
    p.wait()
    landed = count_config_maps(ns)
    deadline = time.monotonic() + 60
    while True:
        again = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
        if again.returncode == 0 or "state is locked" not in again.stderr or time.monotonic() > deadline:
            break
        time.sleep(1)
    plan = subprocess.run([rayform, "plan", f"{name}.toml", "--detailed-exitcode"], cwd=work, env=env, capture_output=True)
    pulled = subprocess.run([rayform, "state", "pull", f"{name}.toml"], cwd=work, env=env, capture_output=True, text=True)
    recorded = len(json.loads(pulled.stdout)["resources"]) if pulled.returncode == 0 else -1
    ok = again.returncode == 0 and plan.returncode == 0 and count_config_maps(ns) == n and recorded == n
    if not ok:
        print(f"  kill {k} ({backend}) did not converge: apply {again.returncode} {again.stderr[-400:]!r}, plan {plan.returncode}, recorded {recorded}", flush=True)
    return landed, ok


def kills():
    n = int(os.environ.get("KILL_OBJECTS", "400"))
    for backend, runs in (("file", int(os.environ.get("KILLS", "20"))), ("kubernetes", int(os.environ.get("KILLS_K8S", "5")))):
        outcomes = [kill_and_converge(k, backend) for k in range(runs)]
        mid = sum(1 for landed, _ in outcomes if 0 < landed < n)
        converged = sum(1 for _, ok in outcomes if ok)
        print(f"  kill -9 during an apply of {n} ConfigMaps ({backend} backend): converged {converged} of {runs}; "
              f"the kill landed mid-apply (some objects, not all) in {mid}; objects live at the kill: "
              f"{sorted(landed for landed, _ in outcomes)}", flush=True)


# Who is measured: name, how its namespace is named, extra command-line words, environment.
CONTENDERS = [
    ("rayform", "r", [], {"RAYFORM_BACKEND": "file"}),
    ("rayform (kubernetes backend)", "s", [], {"RAYFORM_BACKEND": "kubernetes"}),
    ("rayform --server-dry-run=all", "d", ["--server-dry-run", "all"], {"RAYFORM_BACKEND": "file"}),
    ("kubectl apply --server-side", "k", None, {}),
]


def main():
    results = {(who, phase): [] for who, *_ in CONTENDERS for phase in ("create", "update")}
    rss = []
    for r in range(RUNS):
        order = CONTENDERS if r % 2 == 0 else list(reversed(CONTENDERS))
        for who, prefix, extra, env in CONTENDERS:
            subprocess.run([kubectl, "create", "namespace", f"{prefix}{r}"], check=True, capture_output=True)
        for phase, version in (("create", "1"), ("update", "2")):
            for who, prefix, extra, env in order:
                ns = f"{prefix}{r}"
                if extra is None:
                    cmd = [kubectl, "apply", "--server-side", "--field-manager", "bench", "-f", write_kubectl(ns, version)]
                else:
                    write_rayform(ns, version)
                    cmd = [rayform, "apply", f"{ns}.toml", "--auto-approve", "--no-wait", *extra]
                secs = timed(cmd, env)
                results[(who, phase)].append(secs)
                print(f"run {r} {phase:6} {who:32} {secs:.3f} s", flush=True)
        rss.append(peak_rss_kib([rayform, "plan", f"r{r}.toml", "--detailed-exitcode"]))
    if not RUNS:
        kills()
        return
    print(f"\n{N} ConfigMaps, {RUNS} runs, fresh namespaces each run (median, min, max; ratio of medians to kubectl):")
    for phase in ("create", "update"):
        kube = statistics.median(results[("kubectl apply --server-side", phase)])
        for who, *_ in CONTENDERS:
            xs = results[(who, phase)]
            m = statistics.median(xs)
            print(f"  {phase} {who:32} {m:.3f} s ({min(xs):.3f}, {max(xs):.3f})  ratio {m / kube:.2f}")
    print(f"  peak RSS of `rayform plan` ({N} objects, no changes): max {max(rss) / 1024:.1f} MiB "
          f"(runs: {', '.join(f'{x / 1024:.1f}' for x in rss)})", flush=True)
    kills()


if __name__ == "__main__":
    main()
