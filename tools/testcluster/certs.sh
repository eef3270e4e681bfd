#!/usr/bin/env bash
# certs.sh DIR — key material for one test cluster, written to DIR/pki:
#   ca.{crt,key}          one CA; it signs the serving cert and the client certs
#   apiserver.{crt,key}   serving cert: CN localhost, SANs localhost, 127.0.0.1 and
#                         the in-cluster names; EKU serverAuth
#   admin.{crt,key}       client cert: CN admin, O system:masters (cluster-admin)
#   restricted.{crt,key}  client cert: CN restricted, no groups (RBAC decides)
#   kubelet.{crt,key}     serving cert of the node agent's kubelet API (127.0.0.1)
#   sa.{key,pub}          service-account token signing key pair
# Every certificate is X.509 v3 with basicConstraints/keyUsage set, as rustls
# (webpki) insists on; client keys are PKCS#8 so kube-rs accepts them with
# either TLS backend. ECDSA P-256 throughout: key generation is instant.
set -euo pipefail
D=${1:?usage: certs.sh DIR}
mkdir -p "$D/pki"
cd "$D/pki"
umask 077
days=30

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

ec_key ca.key
openssl req -x509 -new -key ca.key -sha256 -days "$days" -subj "/O=rayform-testcluster/CN=testcluster-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
  -addext "subjectKeyIdentifier=hash" -out ca.crt 2>/dev/null

serial=1
leaf() { # leaf NAME SUBJECT EKU [SAN]
  local name=$1 subj=$2 eku=$3 san=${4:-}
  ec_key "$name.key"
  openssl req -new -key "$name.key" -subj "$subj" -out "$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=$eku"
    echo "authorityKeyIdentifier=keyid"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -set_serial "$((serial += 1))" \
    -sha256 -days "$days" -extfile "$name.ext" -out "$name.crt" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

leaf apiserver "/O=rayform-testcluster/CN=localhost" serverAuth \
  "DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1"
leaf kubelet "/O=rayform-testcluster/CN=rayform-node" serverAuth "DNS:localhost,IP:127.0.0.1"
leaf admin "/O=system:masters/CN=admin" clientAuth
leaf restricted "/CN=restricted" clientAuth

# genpkey already writes PKCS#8 ("BEGIN PRIVATE KEY"); make sure of it anyway.
for k in admin restricted apiserver kubelet; do
  grep -q '^-----BEGIN PRIVATE KEY-----' "$k.key" || {
    openssl pkcs8 -topk8 -nocrypt -in "$k.key" -out "$k.key.p8" && mv "$k.key.p8" "$k.key"
  }
done

ec_key sa.key
openssl pkey -in sa.key -pubout -out sa.pub 2>/dev/null
