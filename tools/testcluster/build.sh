#!/usr/bin/env bash
# Builds the local cluster's programs from the Go modules pinned here, once per
# pinned set, into target/ (never committed):
#
#   build.sh          kube-apiserver + etcd (tools/testcluster/go.mod); prints their directory
#   build.sh nodes    also what runs pods: kube-scheduler + kube-controller-manager (same module),
#                     the KubeRay operator (tools/kuberay/go.mod), Karpenter with its kwok
#                     cloud provider (tools/karpenter/go.mod) and the node agent
#                     (tools/nodeagent); prints `NAME=PATH` lines, one per program
#
# Each set lands in a directory named by the hash of what it is built from and
# is published by one rename, so an interrupted build is never mistaken for a
# finished one. Concurrent callers wait for each other (flock), and at most one
# heavy compile runs at once on the machine ($RAYFORM_BUILD_LOCK).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
tools=$repo/tools
command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
export CGO_ENABLED=0
heavy_lock=${RAYFORM_BUILD_LOCK:-/tmp/rayform-heavy-build.lock}

k8s_version=v1.37.2
k8s_minor=37
kuberay_version=v1.5.0
karpenter_version=v1.14.1

# Without these, /version reports v0.0.0-master, which confuses clients' skew checks.
k8s_ldflags() {
	local p ldv=""
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ldv="$ldv -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
	done
	echo "-s -w$ldv"
}

# gobuild MODULE_DIR OUT PACKAGE [GO BUILD FLAGS...]
gobuild() {
	local mod=$1 out=$2 pkg=$3
	shift 3
	(cd "$mod" && flock "$heavy_lock" go build -trimpath -buildvcs=false "$@" -o "$out" "$pkg") >&2
}

# publish SET KEY BUILD_FN BINARY... — build the set unless target/SET/KEY has every binary;
# prints the directory.
publish() {
	local set=$1 key=$2 fn=$3
	shift 3
	local dir=${TESTCLUSTER_BIN_ROOT:-$repo/target}/$set/$key b
	have() { for b in "$@"; do [ -x "$dir/$b" ] || return 1; done; }
	if ! have "$@"; then
		mkdir -p "$(dirname "$dir")"
		exec 9>"$dir.lock"
		flock 9
		if ! have "$@"; then
			rm -rf "$dir.partial"
			mkdir -p "$dir.partial"
			"$fn" "$dir.partial"
			rm -rf "$dir"
			mv "$dir.partial" "$dir"
		fi
		exec 9>&-
	fi
	echo "$dir"
}

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

build_control_plane() {
	echo "testcluster: building kube-apiserver $k8s_version and etcd (first run on this machine only)" >&2
	gobuild "$here" "$1/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver \
		-pgo=off -tags=notest,grpcnotrace -ldflags="$(k8s_ldflags)"
	gobuild "$here" "$1/etcd" go.etcd.io/etcd/server/v3 -tags=grpcnotrace -ldflags="-s -w"
}

build_node_controllers() {
	echo "testcluster: building kube-scheduler and kube-controller-manager $k8s_version (first run only)" >&2
	gobuild "$here" "$1/kube-scheduler" k8s.io/kubernetes/cmd/kube-scheduler \
		-pgo=off -ldflags="$(k8s_ldflags)"
	gobuild "$here" "$1/kube-controller-manager" k8s.io/kubernetes/cmd/kube-controller-manager \
		-pgo=off -ldflags="$(k8s_ldflags)"
}

build_kuberay() {
	echo "testcluster: building the KubeRay operator $kuberay_version (first run only)" >&2
	gobuild "$tools/kuberay" "$1/kuberay-operator" github.com/ray-project/kuberay/ray-operator -ldflags="-s -w"
}

build_karpenter() {
	echo "testcluster: building Karpenter $karpenter_version with its kwok cloud provider (first run only)" >&2
	gobuild "$tools/karpenter" "$1/karpenter-kwok" sigs.k8s.io/karpenter/kwok -ldflags="-s -w"
}

build_nodeagent() {
	echo "testcluster: building the node agent" >&2
	gobuild "$tools/nodeagent" "$1/nodeagent" . -ldflags="-s -w"
}

control_plane=${TESTCLUSTER_BIN:-}
if [ -z "$control_plane" ]; then
	control_plane=$(publish testcluster "$(hash_of "$here/go.sum")" build_control_plane kube-apiserver etcd)
fi
case ${1:-} in
"") echo "$control_plane" ;;
nodes)
	controllers=$(publish testcluster "$(hash_of "$here/go.sum")-nodes" build_node_controllers \
		kube-scheduler kube-controller-manager)
	kuberay=$(publish kuberay "$(hash_of "$tools/kuberay/go.sum")" build_kuberay kuberay-operator)
	karpenter=$(publish karpenter "$(hash_of "$tools/karpenter/go.sum")" build_karpenter karpenter-kwok)
	mapfile -t agent_src < <(find "$tools/nodeagent" -name '*.go' -o -name go.sum | sort)
	agent=$(publish nodeagent "$(hash_of "${agent_src[@]}")" \
		build_nodeagent nodeagent)
	echo "kube-apiserver=$control_plane/kube-apiserver"
	echo "etcd=$control_plane/etcd"
	echo "kube-scheduler=$controllers/kube-scheduler"
	echo "kube-controller-manager=$controllers/kube-controller-manager"
	echo "kuberay-operator=$kuberay/kuberay-operator"
	echo "karpenter-kwok=$karpenter/karpenter-kwok"
	echo "nodeagent=$agent/nodeagent"
	;;
*)
	echo "usage: build.sh [nodes]" >&2
	exit 2
	;;
esac
