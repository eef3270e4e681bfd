#!/usr/bin/env bash
# selftest.sh — end-to-end check of the node agent against a throwaway
# scripts/testcluster control plane (run as root: it creates namespaces,
# veths and a bridge). Checks: node registration and untainting; a pod running
# `python3 -m http.server` gets an IP, env from a Secret and status.podIP,
# turns Ready through exec + httpGet probes; kubectl logs / exec /
# port-forward work (refused ports surface as errors); a pod's UDP "connect"
# to 8.8.8.8 yields its pod IP while eth0 sends nothing; an unknown image
# waits in ImagePullBackOff; pods resolve Services' names from their
# /etc/netns/<netns>/hosts (headless: the ready endpoints; ClusterIP: the
# first ready one), a new Service within seconds, the short name only in the
# Service's namespace; deleting pods leaves no process, namespace, veth or
# /etc/netns dir; SIGTERM stops the agent cleanly; kill -9 + `nodeagent
# cleanup` leaves no namespace, veth, /etc/netns dir, bridge or blackhole
# route. With SELFTEST_RAY=1 (and target/py from scripts/pyenv) it also runs
# a Ray head with KubeRay's probe, and a Ray worker that joins it by the name
# of a headless Service.
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
    --image rayproject/ray="$repo/target/py/bin" --env RAYFORM_SELFTEST=1 >>"$work/agent.log" 2>&1 &
  agent_pid=$!
}
k() { kubectl --request-timeout=20s "$@"; }
pod_ip() { k get pod "$1" -o jsonpath='{.status.podIP}'; }
ready() { [ "$(k get pod "$1" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" = True ]; }
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
check "gpu capacity" sh -c "kubectl get node $node -o jsonpath='{.status.capacity.nvidia\.com/gpu}' | grep -qx 8"
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

echo "== failures"
k apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Pod
metadata: {name: noimage}
spec:
  nodeName: $node
  containers: [{name: c, image: "registry.example/unknown/thing:1", command: ["true"]}]
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
check "unknown image: ImagePullBackOff" waitfor 20 sh -c "kubectl get pod noimage -o jsonpath='{.status.containerStatuses[0].state.waiting.reason}' | grep -qx ImagePullBackOff"
check "unknown image: message names flags" sh -c "kubectl get pod noimage -o jsonpath='{.status.containerStatuses[0].state.waiting.message}' | grep -q 'no local runtime.*--image python=/usr/bin'"
check "unknown image: Pending" sh -c "kubectl get pod noimage -o jsonpath='{.status.phase}' | grep -qx Pending"
check "no command: pod Failed with reason" waitfor 20 sh -c "kubectl get pod nocmd -o jsonpath='{.status.phase} {.status.reason}' | grep -qx 'Failed ContainerCommandRequired'"
check "crash: restarted with CrashLoopBackOff" waitfor 30 sh -c "kubectl get pod crash -o jsonpath='{.status.containerStatuses[0].restartCount} {.status.containerStatuses[0].state.waiting.reason} {.status.containerStatuses[0].lastState.terminated.exitCode}' | grep -qx '1 CrashLoopBackOff 7'"
check "job: init then Succeeded" waitfor 20 sh -c "kubectl get pod job -o jsonpath='{.status.phase} {.status.initContainerStatuses[0].state.terminated.reason}' | grep -qx 'Succeeded Completed'"

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
k delete pod web noimage nocmd crash job --wait=true --timeout=60s >/dev/null
echo "     deleted in $(($(now_ms) - t0)) ms"
check "no pod namespace/veth left" sh -c "[ -z \"\$(ip netns list | grep '^rf${N}-'; ip -o link | grep ': rfv${N}-')\" ]"
check "no /etc/netns dir left" sh -c "! ls -d /etc/netns/rf${N}-* 2>/dev/null"
check "no pod process left" sh -c "! pgrep -f '[h]ttp.server 8080'"
check "bridge still there while running" ip link show "$bridge"

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
t0=$(now_ms)
kill -TERM $agent_pid
wait $agent_pid && ok "agent exited 0 on SIGTERM after $(($(now_ms) - t0)) ms" || bad "agent exit status"
agent_pid=
check "node deleted" sh -c "! kubectl get node $node"
check "nothing left after SIGTERM" sh -c "[ -z \"\$(ip netns list | grep '^rf${N}-'; ip -o link | grep -E ': (rfv${N}-|rfbr${N}:)')\" ]"
check "no sleeper process left" sh -c "! pgrep -f '[s]leep 1000'"

echo "== kill -9 + cleanup"
k delete pod sleeper --force --grace-period=0 >/dev/null 2>&1 || true
start_agent
waitfor 60 k get node $node || bad "node re-registered"
# The new agent claims the first free bridge, not necessarily the one it had.
bridge=$(cat "$state/net/bridge")
N=${bridge#rfbr}
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
check "orphan process survives kill -9" pgrep -f '[s]leep 1001'
"$agent" cleanup --state-dir "$state"
check "cleanup: no namespace/veth/bridge" sh -c "[ -z \"\$(ip netns list | grep '^rf${N}-'; ip -o link | grep -E ': (rfv${N}-|rfbr${N}:)')\" ]"
check "cleanup: no /etc/netns dir" sh -c "! ls -d /etc/netns/rf${N}-* 2>/dev/null"
check "cleanup: orphan process killed" sh -c "sleep 0.5; ! pgrep -f '[s]leep 1001'"
if ip -o link show type bridge | grep -q 'rfbr'; then
  ok "blackhole kept: another agent's bridge exists"
else
  check "cleanup: blackhole route removed" sh -c "! ip route show type blackhole | grep -q 198.18.0.0/15"
fi

echo
if [ $fails -eq 0 ]; then echo "selftest: all checks passed"; else echo "selftest: $fails check(s) FAILED (agent log: kept below)"; tail -40 "$work/agent.log"; exit 1; fi
