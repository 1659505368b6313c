#!/usr/bin/env bash
# Creates the injector webhook's serving certificate with openssl: a private CA (the
# webhook's caBundle) and a leaf for the injector Service's DNS names, both ECDSA P-256.
#   deploy/webhook-cert.sh OUT_DIR [SERVICE NAMESPACE DAYS]
# Writes OUT_DIR/ca.crt, OUT_DIR/tls.crt and OUT_DIR/tls.key. The CA key stays in
# OUT_DIR/ca.key (mode 0600; keep it out of the cluster): running the script again
# renews the leaf under the same CA, so the webhook's caBundle stays valid and only the
# Secret changes. Delete ca.key to start a new CA (then update the caBundle too).
set -euo pipefail
out=${1:?usage: webhook-cert.sh OUT_DIR [SERVICE NAMESPACE DAYS]}
service=${2:-airlock-injector}
namespace=${3:-airlock-system}
days=${4:-365}
host="$service.$namespace.svc"

mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
umask 077

if [[ ! -f "$out/ca.key" || ! -f "$out/ca.crt" ]]; then
  openssl ecparam -name prime256v1 -genkey -noout -out "$out/ca.key"
  openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 \
    -subj "/CN=airlock injector webhook CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.crt"
fi

openssl ecparam -name prime256v1 -genkey -noout -out "$work/leaf.key"
openssl pkcs8 -topk8 -nocrypt -in "$work/leaf.key" -out "$work/tls.key"
openssl req -new -key "$work/tls.key" -subj "/CN=$host" -out "$work/leaf.csr"
cat >"$work/leaf.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$host,DNS:$host.cluster.local,DNS:$service.$namespace
EXT
openssl x509 -req -in "$work/leaf.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -sha256 -days "$days" \
  -extfile "$work/leaf.ext" -out "$work/tls.crt"
# Swapped in together, key first, so a reader never pairs a new certificate with an
# old key for long (the injector also refuses a mismatched pair and keeps the old one).
mv "$work/tls.key" "$out/tls.key"
mv "$work/tls.crt" "$out/tls.crt"
chmod 644 "$out/ca.crt" "$out/tls.crt"
chmod 600 "$out/tls.key" "$out/ca.key"
echo "wrote $out/ca.crt, $out/tls.crt and $out/tls.key for $host (CA key: $out/ca.key)" >&2
