#!/usr/bin/env bash
# Builds kube-apiserver and etcd from the modules pinned in go.mod/go.sum into
# $TESTCLUSTER_BIN (default: <repo>/target/testcluster/<go.sum hash>/), so a
# machine pays the cold build once per pinned set and never commits binaries.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
k8s_version=v1.37.2
k8s_minor=37
key=$(sha256sum "$here/go.sum" | cut -c1-16)
bin=${TESTCLUSTER_BIN:-$repo/target/testcluster/$key}
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ]; then
  echo "$bin"
  exit 0
fi
# Two `up`s on a cold machine must not build twice into the same directory:
# the second waits for the first and then finds the binaries.
mkdir -p "$(dirname "$bin")"
exec 9>"$bin.lock"
flock 9
if [ -x "$bin/kube-apiserver" ] && [ -x "$bin/etcd" ]; then
  echo "$bin"
  exit 0
fi
command -v go >/dev/null || PATH=/usr/local/go/bin:$PATH
rm -rf "$bin.partial"
mkdir -p "$bin.partial"
cd "$here"
export CGO_ENABLED=0
ldv=""
# Without these, /version reports v0.0.0-master, which confuses clients' skew checks.
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldv="$ldv -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done
echo "testcluster: building kube-apiserver $k8s_version and etcd (first run on this machine only)" >&2
go build -trimpath -buildvcs=false -pgo=off -tags=notest,grpcnotrace \
  -ldflags="-s -w $ldv" -o "$bin.partial/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver >&2
go build -trimpath -buildvcs=false -tags=grpcnotrace -ldflags="-s -w" \
  -o "$bin.partial/etcd" go.etcd.io/etcd/server/v3 >&2
# Publish both binaries at once so an interrupted build is never mistaken for a finished one.
rm -rf "$bin"
mv "$bin.partial" "$bin"
echo "$bin"
