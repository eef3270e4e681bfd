#!/usr/bin/env bash
# selftest.sh — end-to-end check of the node agent against a throwaway
# scripts/testcluster control plane (run as root: it creates namespaces, veths
# and a bridge). Checks: node registration and untainting; a pod running
# `python3 -m http.server` gets an IP, env from a Secret and status.podIP, turns
# Ready through exec + httpGet probes; kubectl logs / exec / port-forward work
# (refused ports surface as errors); a pod's UDP "connect" to 8.8.8.8 yields its
# pod IP while eth0 sends nothing; image pulls take their size over the pull
# rate (Waiting/ContainerCreating meanwhile, the kubelet's Pulling/Pulled
# events), are shared by the pods waiting for them, cached on the node, and
# abandoned by a pod deleted mid-pull; an unknown image goes ErrImagePull then
# ImagePullBackOff with the kubelet's events and runs once its image is fixed;
# pods resolve Services' names from their /etc/netns/<netns>/hosts (headless:
# the ready endpoints; ClusterIP: the first ready one), a new Service within
# seconds, the short name only in the Service's namespace; deleting pods leaves
# no process, namespace, veth or /etc/netns dir; SIGTERM stops the agent
# cleanly; kill -9 + `nodeagent cleanup` leaves no namespace, veth, /etc/netns
# dir, bridge or blackhole route. A Node made by hand as Karpenter's kwok
# provider makes them is served too: Ready, untainted, its
# labels/taints/capacity/finalizer kept, its pods' logs/exec/port-forward
# through its own kubelet port; the agent lets go of it once it is deleted (and
# does not bring it back), stops pods left on it, and leaves it in place when
# the agent stops. With SELFTEST_RAY=1 (and target/py from scripts/pyenv) it
# also runs a Ray head with KubeRay's probe, and a Ray worker that joins it by
# the name of a headless Service. With SELFTEST_KARPENTER=1 it then brings up
# `scripts/testcluster up --nodes` (real Karpenter, and the agent built from
# these sources by build.sh): a pending pod asking for a GPU gets a Karpenter
# node and runs on it; deleted, its empty node is removed and let go of.
#   NODEAGENT=path/to/nodeagent tools/nodeagent/selftest.sh
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo/tools/nodeagent
export PATH=$repo/target/py/bin:$PATH:/usr/local/go/bin
agent=${NODEAGENT:-}
built=
if [ -z "$agent" ]; then
  built=$(mktemp -d /tmp/nodeagent-bin.XXXXXX)
  agent=$built/nodeagent
  (cd "$here" && flock /tmp/rayform-heavy-build.lock go build -trimpath -ldflags="-s -w" -o "$agent" .)
fi
command -v kubectl >/dev/null || { echo "selftest: kubectl missing (run scripts/pyenv)" >&2; exit 1; }

fails=0
ok() { printf '  ok   %s\n' "$*"; }
bad() { printf '  FAIL %s\n' "$*"; fails=$((fails + 1)); }
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then ok "$what"; else bad "$what"; fi; }
waitfor() { # waitfor SECONDS CMD... — poll until CMD succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -lt $end ] || return 1; sleep 0.2; done
}
now_ms() { local t=${EPOCHREALTIME/[.,]/}; echo $((t / 1000)); }

eval "$("$repo/scripts/testcluster" up --profile v1 --crds own --watch-pid $$)"
work=$(mktemp -d /tmp/nodeagent-selftest.XXXXXX)
state=$work/state
port=$((20000 + RANDOM % 20000))
node=selftest-node
slow_gb=5 # python:slow* pulls take this many seconds (at --pull-rate 1GB/s)
agent_pid=
finish() {
  [ -z "$agent_pid" ] || kill -9 "$agent_pid" 2>/dev/null || true
  "$agent" cleanup --state-dir "$state" || true
  [ -z "${pf_pid:-}" ] || kill "$pf_pid" 2>/dev/null || true
  "$repo/scripts/testcluster" down "$TESTCLUSTER_DIR" >/dev/null 2>&1 || true
  rm -rf "$work" ${built:+"$built"}
}
trap finish EXIT
start_agent() {
  "$agent" run --kubeconfig "$KUBECONFIG" --node-name $node --port $port \
    --tls-cert "$TESTCLUSTER_DIR/pki/kubelet.crt" --tls-key "$TESTCLUSTER_DIR/pki/kubelet.key" \
    --state-dir "$state" --image python=/usr/bin --image busybox=/usr/bin \
    --image rayproject/ray="$repo/target/py/bin" --env RAYFORM_SELFTEST=1 \
    --serve-provider-id-prefix kwok:// \
    --pull-rate 1GB/s --image-size python:slow=${slow_gb}GB --image-size python:huge=600GB \
    --pull-backoff 1s >>"$work/agent.log" 2>&1 &
  agent_pid=$!
}
k() { kubectl --request-timeout=20s "$@"; }
pod_ip() { k get pod "$1" -o jsonpath='{.status.podIP}'; }
ready() { [ "$(k get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
# events POD — "TYPE REASON COMPONENT HOST MESSAGE" per event, as kubectl describe lists them
events() {
  k get events --field-selector involvedObject.name="$1" \
    -o jsonpath='{range .items[*]}{.type} {.reason} {.source.component} {.source.host} {.message}{"\n"}{end}'
}
has_event() { events "$1" | grep -qF -- "$2"; }
# event POD TEXT — the event shows up: the kubelet, like the agent, writes events
# in the background, seconds late on a busy API server
event() { waitfor 15 has_event "$@"; }
waiting_reason() { k get pod "$1" -o jsonpath='{.status.phase} {.status.containerStatuses[0].state.waiting.reason}'; }
running() { [ "$(k get pod "$1" -o jsonpath='{.status.phase}')" = Running ]; }
sleeper_pod() { # sleeper_pod NAME IMAGE [POLICY]
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: %s}\nspec:\n  nodeName: %s\n  terminationGracePeriodSeconds: 1\n  containers: [{name: c, image: "%s", imagePullPolicy: %s, command: [sleep, "600"]}]\n---\n' \
    "$1" "$node" "$2" "${3:-IfNotPresent}"
}
# procs PATTERN — PIDs matching PATTERN that run in this agent's pod dirs (other
# agents may run on the machine at the same time)
procs() {
  local p
  for p in $(pgrep -f "$1"); do [[ $(readlink "/proc/$p/cwd" 2>/dev/null) != "$state"/* ]] || echo "$p"; done
}
no_procs() { [ -z "$(procs "$1")" ]; }
has_procs() { [ -n "$(procs "$1")" ]; }
eth0_tx() { ip -s -j link show eth0 | python3 -c 'import json,sys;print(json.load(sys.stdin)[0]["stats64"]["tx"]["packets"])'; }
# What the agent creates: namespaces rf<N>-*, veths rfv<N>-*, bridge rfbr<N>.
leftovers() { { ip netns list | grep "^rf${N}-" || true; ip -o link | grep -E ": (rfv${N}-|rfbr${N}[:@])" || true; }; }

echo "== node"
t0=$(now_ms)
start_agent
waitfor 60 k get node $node || bad "node registered"
waitfor 30 sh -c "[ \"\$(kubectl get node $node -o jsonpath='{.spec.taints}')\" = '' ]" && ok "not-ready taint removed" || bad "not-ready taint removed"
echo "     node ready+untainted after $(($(now_ms) - t0)) ms"
check "node Ready" sh -c "kubectl get node $node -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
check "kubelet port published" sh -c "kubectl get node $node -o jsonpath='{.status.daemonEndpoints.kubeletEndpoint.Port}' | grep -qx $port"
check "own node claims no GPU" sh -c "[ -z \"\$(kubectl get node $node -o jsonpath='{.status.capacity.nvidia\.com/gpu}')\" ]"
check "lease" k -n kube-node-lease get lease $node
bridge=$(ip -o link show type bridge | grep -o 'rfbr[0-9]*' | head -1)
N=${bridge#rfbr}
for b in $(ip -o link show type bridge | grep -o 'rfbr[0-9]*'); do grep -q "$b" "$state/net/bridge" && bridge=$b && N=${b#rfbr}; done
check "bridge $bridge recorded" grep -qx "$bridge" "$state/net/bridge"
check "blackhole route" sh -c "ip route show type blackhole | grep -q '198.18.0.0/15'"

echo "== web pod"
k create secret generic websecret --from-literal=token=s3cr3t-value >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 5
  containers:
  - name: web
    image: docker.io/library/python:3.11
    command: [sh, -c]
    args: ['echo "token=\$TOKEN ip=\$MY_IP greeting=\$GREETING"; exec python3 -m http.server 8080']
    env:
    - {name: TOKEN, valueFrom: {secretKeyRef: {name: websecret, key: token}}}
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: GREETING, value: "hello-\$(MY_IP)"}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Mi}}}
    ports: [{name: http, containerPort: 8080}]
    readinessProbe:
      exec: {command: [sh, -c, 'wget -q -T 2 -O- http://localhost:8080/ | grep -q Directory']}
      periodSeconds: 1
    startupProbe:
      httpGet: {path: /, port: http}
      periodSeconds: 1
      failureThreshold: 30
    livenessProbe:
      tcpSocket: {port: 8080}
      periodSeconds: 2
YAML
t0=$(now_ms)
if waitfor 60 ready web; then ok "web Ready after $(($(now_ms) - t0)) ms"; else bad "web Ready"; k get pod web -o yaml; fi
ip=$(pod_ip web)
case $ip in 198.18.$N.*) ok "pod IP $ip in 198.18.$N.0/24" ;; *) bad "pod IP '$ip'" ;; esac
check "phase Running" sh -c "kubectl get pod web -o jsonpath='{.status.phase}' | grep -qx Running"
check "containerID nodeagent://" sh -c "kubectl get pod web -o jsonpath='{.status.containerStatuses[0].containerID}' | grep -q '^nodeagent://'"
check "host answers on pod IP" curl -sf --max-time 5 "http://$ip:8080/"
logs=$(k logs web)
check "logs: secret env" grep -q "token=s3cr3t-value" <<<"$logs"
check "logs: fieldRef podIP + \$(VAR) expansion" grep -q "ip=$ip greeting=hello-$ip" <<<"$logs"
check "secret not in agent log" sh -c "! grep -q s3cr3t-value '$work/agent.log'"
check "exec: env + namespace" sh -c "kubectl exec web -- sh -c 'echo \$MEM; ip -4 -o addr show eth0' | tr '\n' ' ' | grep -q '^262144 .*$ip/24'"
check "exec: exit code propagates" sh -c "kubectl exec web -- sh -c 'exit 3'; [ \$? = 3 ]"
ns=$(ip netns list | grep -o "^rf${N}-[0-9a-f]*" | head -1)
tx0=$(eth0_tx)
src=$(ip netns exec "$ns" python3 -c 'import socket;s=socket.socket(2,2);s.connect(("8.8.8.8",53));print(s.getsockname()[0]);s.send(b"x"*10)' 2>&1 || true)
ip netns exec "$ns" python3 -c 'import socket;s=socket.socket(2,2);[s.sendto(b"x",("8.8.8.8",53)) for _ in range(20)]' 2>/dev/null || true
ip netns exec "$ns" python3 -c 'import socket;s=socket.socket(2,2);[s.sendto(b"x",("198.18.'$N'.250",53)) for _ in range(5)]' 2>/dev/null || true
python3 -c 'import socket;s=socket.socket(2,2);[s.sendto(b"x",("198.18.'$N'.251",53)) for _ in range(5)];[s.sendto(b"x",("198.19.200.9",53)) for _ in range(5)]' 2>/dev/null || true
tx1=$(eth0_tx)
[ "$src" = "$ip" ] && ok "UDP connect to 8.8.8.8 picks the pod IP" || bad "UDP connect source '$src'"
[ "$tx0" = "$tx1" ] && ok "no packet left via eth0 (tx $tx0 -> $tx1)" || bad "eth0 tx moved $tx0 -> $tx1"

echo "== port-forward"
lport=$((40000 + RANDOM % 10000))
k port-forward pod/web $lport:8080 >"$work/pf.log" 2>&1 &
pf_pid=$!
if waitfor 20 curl -sf --max-time 3 "http://127.0.0.1:$lport/"; then ok "port-forward + curl"; else bad "port-forward"; cat "$work/pf.log"; fi
kill $pf_pid 2>/dev/null || true; wait $pf_pid 2>/dev/null || true
lport=$((lport + 1))
k port-forward pod/web $lport:8081 >"$work/pf2.log" 2>&1 &
pf_pid=$!
waitfor 20 grep -q "Forwarding from" "$work/pf2.log" || true
curl -s --max-time 3 "http://127.0.0.1:$lport/" >/dev/null 2>&1 || true
waitfor 5 grep -qi "refused" "$work/pf2.log" || true
kill $pf_pid 2>/dev/null || true; wait $pf_pid 2>/dev/null || true
pf_pid=
if grep -qi "refused" "$work/pf2.log"; then ok "refused port surfaces as error"; else bad "refused port surfaces as error"; cat "$work/pf2.log"; fi

echo "== cluster DNS (hosts files under /etc/netns)"
# No controller-manager runs here, so each Service's EndpointSlice is written by
# hand, as for a Service without a selector; the agent reads both kinds alike.
svc_with_slice() { # NAME headless|clusterip READY_IP [NOT_READY_IP]
  local nr=${4:+"  - {addresses: [\"$4\"], conditions: {ready: false}}"} vip=
  [ "$2" = clusterip ] || vip="clusterIP: None, "
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: $1}
spec: {${vip}ports: [{name: http, port: 8080}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: $1-1, labels: {kubernetes.io/service-name: $1}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
  - {addresses: ["$3"], conditions: {ready: true}}
$nr
YAML
}
resolves() { # POD NAME IP [NAMESPACE] — getent inside the pod answers IP
  [ "$(kubectl exec -n "${4:-default}" "$1" -- getent hosts "$2" | awk '{print $1}')" = "$3" ]
}
unknown() { # POD NAME [NAMESPACE] — getent inside the pod finds no such name (exit code 2) within 5 s
  kubectl exec -n "${3:-default}" "$1" -- timeout 5 getent hosts "$2"
  [ $? = 2 ]
}
svc_with_slice websvc headless "$ip"
check "headless Service: FQDN resolves to its endpoint" waitfor 10 resolves web websvc.default.svc.cluster.local "$ip"
for name in websvc.default.svc websvc.default websvc; do check "headless Service: $name" resolves web $name "$ip"; done
check "pod's own hostname resolves to its IP" resolves web web "$ip"
check "resolv.conf: cluster search path, ndots:5, loopback nameserver" sh -c "kubectl exec web -- cat /etc/resolv.conf | tr '\n' ' ' | grep -qx 'search default.svc.cluster.local svc.cluster.local cluster.local nameserver 127.0.0.1 options ndots:5 '"
t0=$(now_ms)
check "unknown name fails at once" unknown web nosuch.default.svc.cluster.local
echo "     unknown name answered in $(($(now_ms) - t0)) ms (kubectl exec included)"
t0=$(now_ms)
svc_with_slice later headless "$ip"
if waitfor 10 resolves web later.default.svc.cluster.local "$ip"; then ok "new Service resolves in the running pod after $(($(now_ms) - t0)) ms"; else bad "new Service resolves in the running pod"; fi
svc_with_slice vip clusterip "$ip" "198.18.$N.250"
check "ClusterIP Service: its ready endpoint, not the unroutable VIP" waitfor 10 resolves web vip.default.svc.cluster.local "$ip"
check "ClusterIP Service: one address only" sh -c "[ \$(kubectl exec web -- getent ahostsv4 vip.default.svc.cluster.local | awk '{print \$1}' | sort -u | wc -l) = 1 ]"
k delete service later >/dev/null
check "deleted Service stops resolving" waitfor 10 unknown web later.default.svc.cluster.local
k create namespace other >/dev/null
k -n other apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 1
  containers: [{name: c, image: python, command: [sh, -c, "sleep 1002"]}]
YAML
waitfor 30 sh -c "kubectl -n other get pod client -o jsonpath='{.status.phase}' | grep -qx Running" || bad "client pod running"
check "other namespace: websvc.default resolves" resolves client websvc.default "$ip" other
check "other namespace: short name websvc does not" unknown client websvc other
check "the hosts file is /etc/netns/rf${N}-*/hosts" grep -qE "^$ip[[:space:]]+web\$" /etc/netns/rf${N}-*/hosts
k -n other delete pod client --wait=true --timeout=30s >/dev/null
k delete namespace other --wait=false >/dev/null

echo "== image pulls"
{ sleeper_pod pulla python:slow; sleeper_pod pullb python:slow; } | k apply -f - >/dev/null
t0=$(now_ms)
check "pulling: Pending, Waiting/ContainerCreating" waitfor 3 sh -c "[ \"\$(kubectl get pod pulla -o jsonpath='{.status.phase} {.status.containerStatuses[0].state.waiting.reason}')\" = 'Pending ContainerCreating' ]"
check "pulling: event Pulling from kubelet on $node" event pulla "Normal Pulling kubelet $node Pulling image \"python:slow\""
# started_after POD — seconds from the pod's creation to its container's start (whole
# seconds, as the API server keeps them), whatever the checks above waited for
started_after() {
  k get pod "$1" -o jsonpath='{.metadata.creationTimestamp} {.status.containerStatuses[0].state.running.startedAt}' |
    python3 -c 'import sys,datetime as d; a,b=(d.datetime.fromisoformat(x.replace("Z","+00:00")) for x in sys.stdin.read().split()); print(int((b-a).total_seconds()))'
}
if waitfor 20 running pulla && waitfor 5 running pullb; then
  ms=$(($(now_ms) - t0))
  sa=$(started_after pulla) sb=$(started_after pullb)
  if [ "$sa" -ge $((slow_gb - 1)) ] && [ "$sa" -le $((slow_gb + 1)) ] && [ "$sb" -ge $((slow_gb - 1)) ] && [ "$sb" -le $((slow_gb + 1)) ]; then
    ok "two pods sharing one ${slow_gb} s pull both started ${sa} s, ${sb} s after creation (both Running $ms ms after apply)"
  else
    bad "shared pull: started ${sa} s, ${sb} s after creation"
  fi
else
  bad "slow pulls finish"
fi
for p in pulla pullb; do
  event $p " Pulled " || true
  msg=$(events $p | grep " Pulled " || true)
  took=$(sed -n 's/.*Successfully pulled image "python:slow" in \([0-9.]*\)s (\1s including waiting)\. Image size: 5000000000 bytes\./\1/p' <<<"$msg")
  if [ -n "$took" ] && python3 -c "import sys; sys.exit(0 if $slow_gb - 0.1 <= $took <= $slow_gb + 0.6 else 1)"; then
    ok "$p: event Pulled \"Successfully pulled image … in ${took}s\" (configured ${slow_gb}s)"
  else
    bad "$p: event Pulled: '$msg'"
  fi
done
check "pulla: events Created, Started after the pull" waitfor 15 sh -c "kubectl get events --field-selector involvedObject.name=pulla -o jsonpath='{.items[*].reason}' | grep -q 'Pulling Pulled Created Started'"
sleeper_pod pullc python:slow | k apply -f - >/dev/null
t0=$(now_ms)
if waitfor 10 running pullc; then ms=$(($(now_ms) - t0)); [ $ms -lt 2500 ] && ok "second image user on the node Running after $ms ms" || bad "cached image: Running after $ms ms"; else bad "pullc Running"; fi
check "cached image: event 'already present on machine'" event pullc "Normal Pulled kubelet $node Container image \"python:slow\" already present on machine"
check "cached image: no Pulling event" sh -c "! kubectl get events --field-selector involvedObject.name=pullc,reason=Pulling -o name | grep -q ."
sleeper_pod pulld python:huge | k apply -f - >/dev/null
event pulld "Pulling image" || bad "pulld pulling"
t0=$(now_ms)
k delete pod pulld --wait=true --timeout=30s >/dev/null
ms=$(($(now_ms) - t0))
[ $ms -lt 5000 ] && ok "pod deleted mid-pull gone after $ms ms" || bad "pod deleted mid-pull took $ms ms"
check "agent log: stopped while pulling" grep -q "stopped while pulling python:huge.*pod=default/pulld" "$work/agent.log"
sleeper_pod never python:never Never | k apply -f - >/dev/null
check "pull policy Never: ErrImageNeverPull" waitfor 10 sh -c "kubectl get pod never -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -qx ErrImageNeverPull"
check "pull policy Never: event" event never "Warning ErrImageNeverPull kubelet $node Container image \"python:never\" is not present with pull policy of Never"

echo "== failures"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 1
  containers: [{name: c, image: "registry.example/unknown/thing:1", command: [sleep, "600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: nocmd}
spec:
  nodeName: $node
  containers: [{name: c, image: "python:3.11"}]
---
apiVersion: v1
kind: Pod
metadata: {name: crash}
spec:
  nodeName: $node
  restartPolicy: Always
  containers: [{name: c, image: "python:3.11", command: [sh, -c, "echo run; exit 7"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: job}
spec:
  nodeName: $node
  restartPolicy: Never
  initContainers: [{name: init, image: "busybox", command: [sh, -c, "echo init > /dev/null"]}]
  containers: [{name: c, image: "python:3.11", command: [sh, -c, "exit 0"]}]
YAML
bad_image=registry.example/unknown/thing:1
check "unknown image: Pending, ErrImagePull" waitfor 10 sh -c "[ \"\$(kubectl get pod noimage -o jsonpath='{.status.phase} {.status.containerStatuses[0].state.waiting.reason}')\" = 'Pending ErrImagePull' ]"
check "unknown image: then Pending, ImagePullBackOff" waitfor 20 sh -c "[ \"\$(kubectl get pod noimage -o jsonpath='{.status.phase} {.status.containerStatuses[0].state.waiting.reason}')\" = 'Pending ImagePullBackOff' ]"
check "unknown image: back-off message names the image and the flags" sh -c "kubectl get pod noimage -o jsonpath='{.status.containerStatuses[0].state.waiting.message}' | grep -q '^Back-off pulling image \"$bad_image\": ErrImagePull: .*no local runtime.*--image python=/usr/bin'"
for e in "Normal Pulling kubelet $node Pulling image \"$bad_image\"" \
  "Warning Failed kubelet $node Failed to pull image \"$bad_image\": the node agent has no local runtime" \
  "Warning Failed kubelet $node Error: ErrImagePull" \
  "Normal BackOff kubelet $node Back-off pulling image \"$bad_image\"" \
  "Warning Failed kubelet $node Error: ImagePullBackOff"; do
  check "unknown image: event $e" event noimage "$e"
done
# Base 1 s, doubled after each failure: tries at about 0, 1, 3, 7, 15 s (without the
# back-off, one a second). An event's count may lag a try.
sleep 5
tries=$(k get events --field-selector involvedObject.name=noimage,reason=Pulling -o jsonpath='{.items[0].count}' 2>/dev/null || true)
[ "${tries:-0}" -ge 2 ] && [ "${tries:-0}" -le 5 ] && ok "unknown image: $tries pulls tried, backing off" || bad "unknown image: ${tries:-0} pulls tried"
k set image pod/noimage c=python:3.11 >/dev/null
t0=$(now_ms)
if waitfor 10 running noimage; then ok "image fixed: Running after $(($(now_ms) - t0)) ms"; else bad "image fixed: Running"; k get pod noimage -o yaml; fi
check "no command: pod Failed with reason" waitfor 20 sh -c "kubectl get pod nocmd -o jsonpath='{.status.phase} {.status.reason}' | grep -qx 'Failed ContainerCommandRequired'"
check "crash: restarted with CrashLoopBackOff" waitfor 30 sh -c "kubectl get pod crash -o jsonpath='{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].lastState.terminated.exitCode}' | grep -qx '1 CrashLoopBackOff 7'"
check "job: init then Succeeded" waitfor 20 sh -c "kubectl get pod job -o jsonpath='{.status.phase} {.status.initContainerStatuses[0].state.terminated.reason}' | grep -qx 'Succeeded Completed'"

echo "== a node Karpenter's kwok provider launched"
# kwok_node NAME: the Node karpenter/kwok/cloudprovider's toNode creates, with
# what admission adds (the not-ready taint).
kwok_node() {
  k create -f - >/dev/null <<YAML
apiVersion: v1
kind: Node
metadata:
  name: $1
  labels: {karpenter.sh/nodepool: default, karpenter.sh/capacity-type: on-demand, node.kubernetes.io/instance-type: g5.2xlarge,
    karpenter.kwok.sh/instance-family: g5, karpenter.kwok.sh/instance-size: 2xlarge, topology.kubernetes.io/zone: test-zone-a}
  annotations: {kwok.x-k8s.io/node: fake}
  finalizers: [karpenter.sh/termination]
spec:
  providerID: kwok://$1
  taints: [{key: karpenter.sh/unregistered, effect: NoExecute}]
status:
  phase: Pending
  capacity: {cpu: "8", memory: 32Gi, pods: "110", nvidia.com/gpu: "1"}
  allocatable: {cpu: 7910m, memory: 31Gi, pods: "110", nvidia.com/gpu: "1"}
YAML
}
node_field() { k get node "$1" -o jsonpath="$2"; }
served_ready() {
  [ "$(node_field "$1" '{.status.conditions[?(@.type=="Ready")].status}')" = True ] &&
    ! node_field "$1" '{.spec.taints[*].key}' | grep -q 'node.kubernetes.io/'
}
kport_of() { node_field "$1" '{.status.daemonEndpoints.kubeletEndpoint.Port}'; }
listening() { ss -Hltn "sport = :$1" | grep -q .; }
kn=kwok-default-sel1
t0=$(now_ms)
kwok_node $kn
if waitfor 30 served_ready $kn; then ok "Ready, not-ready taint removed after $(($(now_ms) - t0)) ms"; else bad "kwok node Ready+untainted"; k get node $kn -o yaml; fi
check "Karpenter's taint kept" sh -c "[ \"\$(kubectl get node $kn -o jsonpath='{.spec.taints[*].key}')\" = karpenter.sh/unregistered ]"
check "labels kept" sh -c "kubectl get node $kn -o jsonpath='{.metadata.labels.node\.kubernetes\.io/instance-type} {.metadata.labels.karpenter\.sh/nodepool}' | grep -qx 'g5.2xlarge default'"
check "providerID, finalizer, annotation kept" sh -c "kubectl get node $kn -o jsonpath='{.spec.providerID} {.metadata.finalizers} {.metadata.annotations.kwok\.x-k8s\.io/node}' | grep -qx 'kwok://$kn \[\"karpenter.sh/termination\"\] fake'"
check "capacity and allocatable kept (1 GPU)" sh -c "kubectl get node $kn -o jsonpath='{.status.capacity.nvidia\.com/gpu} {.status.allocatable.cpu} {.status.allocatable.memory}' | grep -qx '1 7910m 31Gi'"
check "address 127.0.0.1" sh -c "kubectl get node $kn -o jsonpath='{.status.addresses[0].address}' | grep -qx 127.0.0.1"
kport=$(kport_of $kn)
check "its own kubelet port ($kport) listens" sh -c "[ -n '$kport' ] && [ '$kport' != $port ] && ss -Hltn 'sport = :$kport' | grep -q ."
check "lease" k -n kube-node-lease get lease $kn
# Karpenter lifts its own taint once it sees the node registered.
k patch node $kn --type=json -p '[{"op":"remove","path":"/spec/taints"}]' >/dev/null
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: gpu}
spec:
  nodeName: $kn
  terminationGracePeriodSeconds: 5
  containers:
  - name: c
    image: python:3.11
    command: [sh, -c]
    args: ['echo "on-kwok ip=\$MY_IP mem=\$MEM"; exec python3 -m http.server 8080']
    env:
    - {name: MY_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
    - {name: MEM, valueFrom: {resourceFieldRef: {resource: limits.memory, divisor: 1Gi}}}
    resources: {limits: {nvidia.com/gpu: "1"}}
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
YAML
t0=$(now_ms)
if waitfor 30 ready gpu; then ok "pod on it Ready after $(($(now_ms) - t0)) ms"; else bad "pod on kwok node Ready"; k get pod gpu -o yaml; fi
gip=$(pod_ip gpu)
case $gip in 198.18.$N.*) [ "$gip" != "$(pod_ip web)" ] && ok "pod IP $gip on the same bridge, not web's" || bad "pod IP $gip is web's" ;; *) bad "pod IP '$gip'" ;; esac
check "logs through the API server (allocatable of the kwok node)" sh -c "kubectl logs gpu | grep -qx 'on-kwok ip=$gip mem=31'"
check "exec through the API server" sh -c "kubectl exec gpu -- sh -c 'ip -4 -o addr show eth0' | grep -q '$gip/24'"
lport=$((lport + 1))
k port-forward pod/gpu $lport:8080 >"$work/pf3.log" 2>&1 &
pf_pid=$!
if waitfor 20 curl -sf --max-time 3 "http://127.0.0.1:$lport/"; then ok "port-forward + curl"; else bad "port-forward to the kwok node's pod"; cat "$work/pf3.log"; fi
kill $pf_pid 2>/dev/null || true; wait $pf_pid 2>/dev/null || true
pf_pid=

echo "== Karpenter drains and deletes it"
k delete node $kn --wait=false >/dev/null
sleep 1
check "still served while its finalizer holds it" sh -c "kubectl get pod gpu -o jsonpath='{.status.phase}' | grep -qx Running"
t0=$(now_ms)
k delete pod gpu --wait=true --timeout=30s >/dev/null && ok "pod deleted gracefully in $(($(now_ms) - t0)) ms" || bad "pod on terminating node deleted"
t0=$(now_ms)
k patch node $kn --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null
if waitfor 20 sh -c "! ss -Hltn 'sport = :$kport' | grep -q ."; then ok "kubelet port closed $(($(now_ms) - t0)) ms after the Node went"; else bad "kubelet port $kport closed"; fi
check "agent says it let go" grep -q "stopped serving node $kn" "$work/agent.log"
sleep 3
check "node not recreated" sh -c "! kubectl get node $kn"
check "its lease is gone" sh -c "! kubectl -n kube-node-lease get lease $kn"

echo "== a served node deleted under a running pod"
kn2=kwok-default-sel2
kwok_node $kn2
waitfor 30 served_ready $kn2 || bad "$kn2 Ready"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: stranded}
spec:
  nodeName: $kn2
  containers: [{name: c, image: python, command: [sh, -c, "sleep 1002"]}]
YAML
waitfor 30 sh -c "kubectl get pod stranded -o jsonpath='{.status.phase}' | grep -qx Running" || bad "stranded running"
k patch node $kn2 --type=json -p '[{"op":"remove","path":"/metadata/finalizers"}]' >/dev/null
t0=$(now_ms)
k delete node $kn2 >/dev/null
if waitfor 20 no_procs '[s]leep 1002'; then ok "its pod's processes stopped $(($(now_ms) - t0)) ms after the delete"; else bad "stranded pod stopped"; fi
k delete pod stranded --force --grace-period=0 >/dev/null 2>&1 || true

if [ "${SELFTEST_RAY:-0}" = 1 ] && [ -x "$repo/target/py/bin/ray" ]; then
  echo "== ray head"
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: rayhead}
spec:
  nodeName: $node
  containers:
  - name: ray-head
    image: rayproject/ray:2.60.0
    command: [/bin/bash, -lc, --]
    args: ["ulimit -n 65536; ray start --head --block --dashboard-host=0.0.0.0 --dashboard-agent-listen-port=52365 --num-cpus=1 --disable-usage-stats"]
    resources: {limits: {cpu: "1", memory: 2Gi}}
    readinessProbe:
      exec: {command: [bash, -c, "wget --tries 1 -T 2 -q -O- http://localhost:52365/api/local_raylet_healthz | grep success && wget --tries 1 -T 10 -q -O- http://localhost:8265/api/gcs_healthz | grep success"]}
      initialDelaySeconds: 10
      periodSeconds: 5
      timeoutSeconds: 10
      failureThreshold: 120
YAML
  t0=$(now_ms)
  if waitfor 240 ready rayhead; then ok "ray head Ready (KubeRay probe) after $(($(now_ms) - t0)) ms"; else bad "ray head Ready"; k logs rayhead | tail -20; fi
  rip=$(pod_ip rayhead)
  check "dashboard answers on $rip:8265" curl -sf --max-time 5 "http://$rip:8265/api/version"
  echo "== ray worker joins the head by its Service's name"
  svc_with_slice rayhead-svc headless "$rip"
  k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: rayworker}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 5
  containers:
  - name: ray-worker
    image: rayproject/ray:2.60.0
    command: [/bin/bash, -lc, --]
    args: ["ray start --address=rayhead-svc.default.svc.cluster.local:6379 --block --num-cpus=1 --disable-usage-stats"]
YAML
  two_alive() { # the head's dashboard lists two ALIVE Ray nodes
    [ "$(curl -s --max-time 3 "http://$rip:8265/nodes?view=summary" |
      python3 -c 'import json,sys; print(sum(n["raylet"]["state"] == "ALIVE" for n in json.load(sys.stdin)["data"]["summary"]))')" = 2 ]
  }
  t0=$(now_ms)
  if waitfor 180 two_alive; then
    ok "worker joined: the head's dashboard lists 2 ALIVE nodes after $(($(now_ms) - t0)) ms"
  else bad "worker joined the head"; k logs rayworker | tail -20; fi
  t0=$(now_ms)
  k delete pod rayhead rayworker --wait=true --timeout=90s >/dev/null
  echo "     ray head and worker deleted in $(($(now_ms) - t0)) ms"
fi

echo "== agent memory: $(ps -o rss= -p $agent_pid) KiB RSS"
echo "== delete"
t0=$(now_ms)
k delete pod web noimage nocmd crash job pulla pullb pullc never --wait=true --timeout=60s >/dev/null
echo "     deleted in $(($(now_ms) - t0)) ms"
check "no pod namespace/veth left" sh -c "[ -z \"\$(ip netns list | grep '^rf${N}-'; ip -o link | grep ': rfv${N}-')\" ]"
check "no /etc/netns dir left" sh -c "! ls -d /etc/netns/rf${N}-* 2>/dev/null"
check "no pod process left" no_procs '[h]ttp.server 8080'
check "bridge still there while running" ip link show "$bridge"
# A kubelet deletes the pod object once its containers are gone, not when the
# grace period runs out: Karpenter's drain waits for exactly that.
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: quick}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 30
  containers: [{name: c, image: python, command: [python3, -m, http.server, "8081"]}]
YAML
waitfor 30 sh -c "kubectl get pod quick -o jsonpath='{.status.phase}' | grep -qx Running" || bad "quick running"
t0=$(now_ms)
k delete pod quick --wait=true --timeout=60s >/dev/null
ms=$(($(now_ms) - t0))
[ $ms -lt 10000 ] && ok "pod that stops on SIGTERM gone in $ms ms (grace 30 s)" || bad "pod that stops on SIGTERM took $ms ms (grace 30 s)"

echo "== SIGTERM"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: sleeper}
spec:
  nodeName: $node
  terminationGracePeriodSeconds: 3
  containers: [{name: c, image: python, command: [sh, -c, "trap '' TERM; sleep 1000 & wait; sleep 1000"]}]
YAML
waitfor 30 sh -c "kubectl get pod sleeper -o jsonpath='{.status.phase}' | grep -qx Running" || bad "sleeper running"
kn3=kwok-default-sel3
kwok_node $kn3
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: kept}
spec:
  nodeName: $kn3
  containers: [{name: c, image: python, command: [sh, -c, "sleep 1003"]}]
YAML
waitfor 30 sh -c "kubectl get pod kept -o jsonpath='{.status.phase}' | grep -qx Running" || bad "kept running"
t0=$(now_ms)
kill -TERM $agent_pid
wait $agent_pid && ok "agent exited 0 on SIGTERM after $(($(now_ms) - t0)) ms" || bad "agent exit status"
agent_pid=
check "node deleted" sh -c "! kubectl get node $node"
check "nothing left after SIGTERM" sh -c "[ -z \"\$(ip netns list | grep '^rf${N}-'; ip -o link | grep -E ': (rfv${N}-|rfbr${N}:)')\" ]"
check "no sleeper process left" no_procs '[s]leep 1000'
check "served node left in place" k get node $kn3
check "its pod's processes stopped" no_procs '[s]leep 1003'

echo "== kill -9 + cleanup"
k delete pod sleeper --force --grace-period=0 >/dev/null 2>&1 || true
start_agent
waitfor 60 k get node $node || bad "node re-registered"
N=$(sed -n 's/^rfbr//p' "$state/net/bridge") # another agent may have freed a lower one meanwhile
t0=$(now_ms)
if waitfor 30 has_procs '[s]leep 1003'; then ok "served node's pod running again $(($(now_ms) - t0)) ms after the restart"; else bad "served node's pod restarted"; fi
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: orphan}
spec:
  nodeName: $node
  containers: [{name: c, image: python, command: [sh, -c, "sleep 1001"]}]
YAML
waitfor 30 sh -c "kubectl get pod orphan -o jsonpath='{.status.phase}' | grep -qx Running" || bad "orphan running"
check "orphan has its /etc/netns dir" sh -c "ls -d /etc/netns/rf${N}-*"
kill -9 $agent_pid
wait $agent_pid 2>/dev/null || true
agent_pid=
check "orphan process survives kill -9" has_procs '[s]leep 1001'
check "served node's pod survives kill -9" has_procs '[s]leep 1003'
"$agent" cleanup --state-dir "$state"
check "cleanup: no namespace/veth/bridge" sh -c "[ -z \"\$(ip netns list | grep '^rf${N}-'; ip -o link | grep -E ': (rfv${N}-|rfbr${N}:)')\" ]"
check "cleanup: no /etc/netns dir" sh -c "! ls -d /etc/netns/rf${N}-* 2>/dev/null"
sleep 0.5
check "cleanup: orphan process killed" no_procs '[s]leep 1001'
check "cleanup: served node's pod killed" no_procs '[s]leep 1003'
if ip -o link show type bridge | grep -q 'rfbr'; then
  ok "blackhole kept: another agent's bridge exists"
else
  check "cleanup: blackhole route removed" sh -c "! ip route show type blackhole | grep -q 198.18.0.0/15"
fi

if [ "${SELFTEST_KARPENTER:-0}" = 1 ]; then
  echo "== real Karpenter: a GPU pod gets a node, the empty node goes"
  "$repo/scripts/testcluster" down "$TESTCLUSTER_DIR" >/dev/null 2>&1 || true
  eval "$("$repo/scripts/testcluster" up --profile v1 --nodes --watch-pid $$)"
  N=$(grep -o 'pod network 198.18.[0-9]*' "$TESTCLUSTER_DIR/nodeagent.log" | head -1 | cut -d. -f3)
  k create namespace karp >/dev/null
  t0=$(now_ms)
  k -n karp apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: gpu}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: c
    image: rayproject/ray:2.60.0
    command: [sh, -c, 'echo "on a Karpenter node"; exec python3 -m http.server 8080']
    resources: {requests: {cpu: "1", memory: 1Gi}, limits: {nvidia.com/gpu: "1"}}
YAML
  if waitfor 90 sh -c "kubectl -n karp get pod gpu -o jsonpath='{.status.phase}' | grep -qx Running"; then
    ok "pending GPU pod Running $(($(now_ms) - t0)) ms after it was created"
  else
    bad "GPU pod Running"; k -n karp get pod gpu -o yaml | tail -30
  fi
  kn=$(k -n karp get pod gpu -o jsonpath='{.spec.nodeName}')
  check "on a kwok node with a GPU ($kn)" sh -c "kubectl get node '$kn' -o jsonpath='{.spec.providerID} {.status.allocatable.nvidia\.com/gpu}' | grep -qx 'kwok://$kn 1'"
  check "Karpenter: NodeClaim Initialized" sh -c "kubectl get nodeclaims -o jsonpath='{.items[*].status.conditions[?(@.type==\"Initialized\")].status}' | grep -qx True"
  check "logs through the node's kubelet port" sh -c "kubectl -n karp logs gpu | grep -q 'on a Karpenter node'"
  t0=$(now_ms)
  k -n karp delete pod gpu >/dev/null
  if waitfor 120 sh -c "! kubectl get node '$kn'"; then ok "empty node removed by Karpenter $(($(now_ms) - t0)) ms after the pod was deleted"; else bad "empty node removed"; fi
  check "agent let go of it" waitfor 10 grep -q "stopped serving node $kn" "$TESTCLUSTER_DIR/nodeagent.log"
  check "its lease is gone" sh -c "! kubectl -n kube-node-lease get lease '$kn'"
  check "no pod namespace/veth left" sh -c "[ -z \"\$(ip netns list | grep '^rf${N}-'; ip -o link | grep ': rfv${N}-')\" ]"
  "$repo/scripts/testcluster" down "$TESTCLUSTER_DIR" >/dev/null 2>&1
  check "down: no bridge left" sh -c "! ip link show rfbr$N"
fi

echo
if [ $fails -eq 0 ]; then echo "selftest: all checks passed"; else echo "selftest: $fails check(s) FAILED (agent log: kept below)"; tail -40 "$work/agent.log"; exit 1; fi
