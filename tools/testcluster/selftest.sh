#!/usr/bin/env bash
# selftest.sh [PROFILE...] — check scripts/testcluster end to end, with curl only
# (no kubectl): for each profile (default: v1 v1beta1 v1alpha5) and each CRD
# source (upstream when ../shared/crds exists, and own; override with
# SELFTEST_CRDS="own"), bring a cluster up and check that
#   - /version answers v1.37.2 and the Karpenter "default" objects exist,
#     owned by field manager karpenter-install;
#   - user `restricted` may read NodePools/Provisioners but not patch them
#     (SelfSubjectAccessReview and a real PATCH -> 403), and may create RayServices;
#   - a server-side apply dry-run of a valid RayService succeeds and persists nothing;
#   - an invalid RayService (replicas: many) is rejected with HTTP 422 and the
#     server's schema message;
#   - `down` stops every process and removes the directory.
# Then checks that --watch-pid tears a cluster down when the watched process exits.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo/tools/testcluster
tc=$repo/scripts/testcluster
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(v1 v1beta1 v1alpha5)
if [ -n "${SELFTEST_CRDS:-}" ]; then
  read -ra sources <<<"$SELFTEST_CRDS"
elif [ -d "$repo/../shared/crds" ]; then
  sources=(upstream own)
else
  sources=(own)
fi

fails=0
ok() { printf '  ok   %s\n' "$*"; }
bad() {
  printf '  FAIL %s\n' "$*"
  fails=$((fails + 1))
}
check() { # check DESCRIPTION COMMAND...
  local what=$1
  shift
  if "$@"; then ok "$what"; else bad "$what"; fi
}

# req USER METHOD PATH [CURL-ARGS...] -> body on stdout, HTTP code in $code
req() {
  local user=$1 method=$2 path=$3 out
  shift 3
  out=$(mktemp)
  code=$(curl -sS -A selftest --cacert "$TESTCLUSTER_DIR/pki/ca.crt" \
    --cert "$TESTCLUSTER_DIR/pki/$user.crt" --key "$TESTCLUSTER_DIR/pki/$user.key" \
    -o "$out" -w '%{http_code}' -X "$method" "$@" "$server$path") || code=000
  body=$(cat "$out")
  rm -f "$out"
}
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1]))" "$1" <<<"$body"; }

can_i() { # can_i USER VERB GROUP RESOURCE [NAMESPACE] -> prints True/False
  local ns=${5:-}
  req "$1" POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews -H 'Content-Type: application/json' \
    --data "{\"apiVersion\":\"authorization.k8s.io/v1\",\"kind\":\"SelfSubjectAccessReview\",\"spec\":{\"resourceAttributes\":{\"verb\":\"$2\",\"group\":\"$3\",\"resource\":\"$4\",\"namespace\":\"$ns\"}}}"
  json "d['status']['allowed']"
}

no_process_left() { # the PIDs recorded in the (removed) dir are gone
  local pid state i
  for pid in "$@"; do
    for ((i = 0; i < 20; i++)); do
      state=$(ps -o stat= -p "$pid" 2>/dev/null || true)
      [ -z "$state" ] || [ "${state:0:1}" = Z ] && continue 2
      sleep 0.1
    done
    return 1
  done
}

torn_down() { no_process_left "$@" && [ ! -e "$TESTCLUSTER_DIR" ]; }

run_one() {
  local profile=$1 crds=$2 env pids np_res nc_res nc_group
  echo "== profile $profile, CRDs $crds"
  env=$("$tc" up --profile "$profile" --crds "$crds" --watch-pid $$) || {
    bad "up failed"
    return
  }
  eval "$env"
  server=$(awk '/server:/ { print $2 }' "$KUBECONFIG")
  check "stdout is exactly the three export lines" test "$(wc -l <<<"$env")" = 3
  pids="$(cat "$TESTCLUSTER_DIR/etcd.pid") $(cat "$TESTCLUSTER_DIR/apiserver.pid") $(cat "$TESTCLUSTER_DIR/watchdog.pid")"

  req admin GET /version
  check "/version is v1.37.2" test "$(json "d['gitVersion']")" = v1.37.2

  case $profile in
  v1) np_res=karpenter.sh/v1/nodepools nc_res=karpenter.k8s.aws/v1/ec2nodeclasses ;;
  v1beta1) np_res=karpenter.sh/v1beta1/nodepools nc_res=karpenter.k8s.aws/v1beta1/ec2nodeclasses ;;
  v1alpha5) np_res=karpenter.sh/v1alpha5/provisioners nc_res=karpenter.k8s.aws/v1alpha1/awsnodetemplates ;;
  esac
  for r in "$np_res" "$nc_res"; do
    req admin GET "/apis/$r/default"
    check "GET $r/default -> 200, managed by karpenter-install" \
      test "$code $(json "d['metadata']['managedFields'][0]['manager']")" = "200 karpenter-install"
  done
  req admin GET "/apis/$nc_res/default"
  check "default node class has a 20Gi gp3 /dev/xvda" test \
    "$(json "[(b['deviceName'], b['ebs']['volumeSize'], b['ebs']['volumeType']) for b in d['spec']['blockDeviceMappings']]")" \
    = "[('/dev/xvda', '20Gi', 'gp3')]"
  req admin GET "/apis/$np_res/default"
  case $profile in
  v1) check "NodePool: WhenEmptyOrUnderutilized after 30s" test "$(json "d['spec']['disruption']['consolidationPolicy'] + ' ' + d['spec']['disruption']['consolidateAfter']")" = "WhenEmptyOrUnderutilized 30s" ;;
  v1beta1) check "NodePool: WhenEmpty after 30s, expireAfter 720h" test "$(json "d['spec']['disruption']['consolidationPolicy'] + ' ' + d['spec']['disruption']['consolidateAfter'] + ' ' + d['spec']['disruption']['expireAfter']")" = "WhenEmpty 30s 720h" ;;
  v1alpha5) check "Provisioner: ttlSecondsAfterEmpty 30, no consolidation" test "$(json "str(d['spec']['ttlSecondsAfterEmpty']) + ' ' + str('consolidation' in d['spec'])")" = "30 False" ;;
  esac

  local g=${np_res%%/*} res=${np_res##*/}
  nc_group=${nc_res%%/*}
  check "restricted: can-i get $res -> yes" test "$(can_i restricted get "$g" "$res")" = True
  check "restricted: can-i patch $res -> no" test "$(can_i restricted patch "$g" "$res")" = False
  check "restricted: can-i update ${nc_res##*/} -> no" test "$(can_i restricted update "$nc_group" "${nc_res##*/}")" = False
  check "restricted: can-i patch rayservices -> yes" test "$(can_i restricted patch ray.io rayservices default)" = True
  check "restricted: can-i create secrets -> yes" test "$(can_i restricted create "" secrets default)" = True
  check "admin: can-i * * -> yes" test "$(can_i admin '*' '*' '*')" = True
  req restricted PATCH "/apis/$np_res/default" -H 'Content-Type: application/merge-patch+json' --data '{"spec":{"weight":5}}'
  check "restricted: real PATCH of $res/default -> 403" test "$code" = 403

  req restricted PATCH "/apis/ray.io/v1/namespaces/default/rayservices/selftest-llm?fieldManager=rayform&dryRun=All" \
    -H 'Content-Type: application/apply-patch+yaml' --data-binary @"$here/selftest/rayservice-valid.yaml"
  check "dry-run server-side apply of a valid RayService -> 201 (as restricted)" test "$code" = 201
  req admin GET /apis/ray.io/v1/namespaces/default/rayservices
  check "dry run persisted nothing" test "$(json "len(d['items'])")" = 0
  req admin POST /apis/ray.io/v1/namespaces/default/rayservices -H 'Content-Type: application/yaml' \
    --data-binary @"$here/selftest/rayservice-invalid.yaml"
  local msg
  msg=$(json "d.get('message', '')")
  check "invalid RayService -> 422 with the server's message" test "$code" = 422
  check "  message: $(cut -c1-150 <<<"$msg")..." grep -q 'workerGroupSpecs\[0\].replicas in body must be of type integer' <<<"$msg"
  req admin PATCH "/apis/ray.io/v1/namespaces/default/rayservices/selftest-invalid?fieldManager=rayform" \
    -H 'Content-Type: application/apply-patch+yaml' --data-binary @"$here/selftest/rayservice-invalid.yaml"
  check "invalid RayService via server-side apply is refused (HTTP $code: $(json "d.get('message', '')[:110]"))" test "${code:0:1}" != 2

  "$tc" down "$TESTCLUSTER_DIR"
  # shellcheck disable=SC2086 # word list of PIDs
  check "down: no process left, dir removed" torn_down $pids
}

for profile in "${profiles[@]}"; do
  for crds in "${sources[@]}"; do run_one "$profile" "$crds"; done
done

echo "== --watch-pid"
sleep 30 &
victim=$!
env=$("$tc" up --crds "${sources[0]}" --watch-pid "$victim")
eval "$env"
pids="$(cat "$TESTCLUSTER_DIR/etcd.pid") $(cat "$TESTCLUSTER_DIR/apiserver.pid") $(cat "$TESTCLUSTER_DIR/watchdog.pid")"
kill "$victim"
wait "$victim" 2>/dev/null || true
for ((i = 0; i < 100; i++)); do [ -e "$TESTCLUSTER_DIR" ] || break; sleep 0.1; done
# shellcheck disable=SC2086
check "watched process exited -> cluster torn down" torn_down $pids

if [ $fails -gt 0 ]; then
  echo "selftest: $fails check(s) FAILED"
  exit 1
fi
echo "selftest: all checks passed"
