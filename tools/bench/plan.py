"""Benchmark: a no-op `rayform plan` of a large stack against `kubectl diff --server-side`.

Run by scripts/bench-plan (which starts a local control plane and exports KUBECONFIG).
The stack holds OBJECTS ConfigMaps (default 100), a Secret and the two Karpenter
patches; kubectl diffs the same ConfigMaps from a directory of manifests. Both
answer "what would change" against the same API server in the same run; kubectl
sends a server-side dry run per object, rayform lists each kind once and dry-runs
only what its fingerprints say may have changed.
"""

import os
import statistics
import subprocess
import time

N = int(os.environ.get("OBJECTS", "100"))
RUNS = int(os.environ.get("RUNS", "10"))
repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
rayform = os.path.join(repo, "target", "release", "rayform")
kubectl = os.path.join(repo, "target", "py", "bin", "kubectl")
work = os.environ["BENCH_DIR"]


def timed(cmd, ok=(0,)):
    t = time.monotonic()
    p = subprocess.run(cmd, cwd=work, capture_output=True)
    if p.returncode not in ok:
        raise SystemExit(f"{cmd} failed ({p.returncode}): {p.stderr.decode()}")
    return time.monotonic() - t


def main():
    subprocess.run([kubectl, "create", "namespace", "bench"], check=True, capture_output=True)
    stack = ['[stack]\nname = "bench"\nnamespace = "bench"\n',
             '[nodepool.default]\nempty_ttl = "600s"\n', '[nodeclass.default]\nstorage = "200Gi"\n',
             '[secret.token.data]\nTOKEN = { env = "BENCH_TOKEN" }\n']
    os.makedirs(os.path.join(work, "manifests"), exist_ok=True)
    for i in range(N):
        stack.append(f'[manifest.cm{i}]\nobject = {{ apiVersion = "v1", kind = "ConfigMap", data = {{ index = "{i}" }} }}\n')
    with open(os.path.join(work, "bench.toml"), "w") as f:
        f.write("\n".join(stack))
    os.environ["BENCH_TOKEN"] = "bench-token"
    timed([rayform, "apply", "bench.toml", "--auto-approve", "--no-wait"])
    # The same objects as kubectl would hold them, labels included, so the diff is empty.
    for i in range(N):
        with open(os.path.join(work, "manifests", f"cm{i}.yaml"), "w") as f:
            f.write(f"""apiVersion: v1
kind: ConfigMap
metadata:
  name: cm{i}
  namespace: bench
  labels: {{app.kubernetes.io/managed-by: rayform, rayform.io/stack: bench}}
  annotations: {{rayform.io/address: manifest.cm{i}}}
data:
  index: "{i}"
""")
    plan = [timed([rayform, "plan", "bench.toml", "--detailed-exitcode"]) for _ in range(RUNS)]
    # kubectl diff exits 1 when it finds a difference (0: none); both are answers.
    probe = subprocess.run([kubectl, "diff", "--server-side", "--field-manager", "rayform/bench", "-f", "manifests"], cwd=work, capture_output=True, text=True)
    changed = [l for l in probe.stdout.splitlines() if l.startswith(("+ ", "- ")) or l.startswith(("+  ", "-  "))]
    print(f"kubectl diff exit code {probe.returncode}; changed lines it shows: {len(changed)} {changed[:4]}")
    diff = [timed([kubectl, "diff", "--server-side", "--field-manager", "rayform/bench", "-f", "manifests"], ok=(0, 1)) for _ in range(RUNS)]
    pm, dm = statistics.median(plan), statistics.median(diff)
    print(f"no-op plan of {N} ConfigMaps + Secret + 2 Karpenter patches, {RUNS} runs each:")
    print(f"  rayform plan --detailed-exitcode:      median {pm:.3f} s (min {min(plan):.3f}, max {max(plan):.3f})")
    print(f"  kubectl diff --server-side -f ({N}):   median {dm:.3f} s (min {min(diff):.3f}, max {max(diff):.3f})")
    print(f"  ratio of medians rayform / kubectl: {pm / dm:.2f}")


if __name__ == "__main__":
    main()
