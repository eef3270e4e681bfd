"""Benchmark: `rayform apply` of many objects against `kubectl apply --server-side`.

Run by scripts/bench-apply (which starts a local control plane and exports KUBECONFIG).
Each run uses fresh namespaces, one for rayform and one for kubectl, so both
create OBJECTS ConfigMaps (default 1000) from nothing, then both update every one
of them (a new value in each). rayform's figure is the whole `rayform apply`
(it reads the stack, observes the cluster, plans and applies); kubectl's is
`kubectl apply --server-side -f DIR`. The two alternate which goes first.
Also measured: the peak resident memory of `rayform plan` of the created stack.
"""

import os
import statistics
import subprocess
import time

N = int(os.environ.get("OBJECTS", "1000"))
RUNS = int(os.environ.get("RUNS", "3"))
repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rayform = os.environ.get("RAYFORM", os.path.join(repo, "target", "release", "rayform"))
kubectl = os.path.join(repo, "target", "py", "bin", "kubectl")
work = os.environ["BENCH_DIR"]


def timed(cmd):
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=work, capture_output=True)
    elapsed = time.monotonic() - t
    if p.returncode != 0:
        raise SystemExit(f"{cmd} failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
    return elapsed


def peak_rss_kib(cmd):
    p = subprocess.Popen(cmd, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(p.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 2):
        raise SystemExit(f"{cmd} failed ({code}): {p.stderr.read().decode()[-2000:]}")
    return usage.ru_maxrss


def write_rayform(run_no, version):
    ns = f"r{run_no}"
    lines = [f'[stack]\nname = "bench{run_no}"\nnamespace = "{ns}"\n']
    for i in range(N):
        lines.append(f'[manifest.cm{i}]\nobject = {{ apiVersion = "v1", kind = "ConfigMap", data = {{ index = "{i}", version = "{version}" }} }}\n')
    with open(os.path.join(work, f"bench{run_no}.toml"), "w") as f:
        f.write("\n".join(lines))


def write_kubectl(run_no, version):
    d = os.path.join(work, f"k{run_no}")
    os.makedirs(d, exist_ok=True)
    for i in range(N):
        with open(os.path.join(d, f"cm{i}.yaml"), "w") as f:
            f.write(f"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm{i}\n  namespace: k{run_no}\n"
                    f"data:\n  index: \"{i}\"\n  version: \"{version}\"\n")
    return d


def main():
    results = {"create": ([], []), "update": ([], [])}
    rss = []
    for r in range(RUNS):
        for ns in (f"r{r}", f"k{r}"):
            subprocess.run([kubectl, "create", "namespace", ns], check=True, capture_output=True)
        for phase, version in (("create", "1"), ("update", "2")):
            write_rayform(r, version)
            kdir = write_kubectl(r, version)
            ray_cmd = [rayform, "apply", f"bench{r}.toml", "--auto-approve", "--no-wait"]
            kube_cmd = [kubectl, "apply", "--server-side", "--field-manager", "bench", "-f", kdir]
            order = [("rayform", ray_cmd), ("kubectl", kube_cmd)]
            if r % 2:
                order.reverse()
            for who, cmd in order:
                secs = timed(cmd)
                results[phase][0 if who == "rayform" else 1].append(secs)
                print(f"run {r} {phase:6} {who:8} {secs:.3f} s", flush=True)
            if phase == "create":
                rss.append(peak_rss_kib([rayform, "plan", f"bench{r}.toml", "--detailed-exitcode"]))
    print(f"\n{N} ConfigMaps, {RUNS} runs, fresh namespaces each run:")
    for phase, (ray, kube) in results.items():
        rm, km = statistics.median(ray), statistics.median(kube)
        print(f"  {phase}: rayform apply median {rm:.3f} s (min {min(ray):.3f}, max {max(ray):.3f}); "
              f"kubectl apply --server-side median {km:.3f} s (min {min(kube):.3f}, max {max(kube):.3f}); "
              f"ratio {rm / km:.2f}")
    print(f"  peak RSS of `rayform plan` ({N} objects, no changes): max {max(rss) / 1024:.1f} MiB "
          f"(runs: {', '.join(f'{x / 1024:.1f}' for x in rss)})")


if __name__ == "__main__":
    main()
