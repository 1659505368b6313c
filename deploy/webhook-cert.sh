#!/usr/bin/env bash
# Creates the injector webhook's serving certificate with openssl: a private CA (the
# webhook's caBundle) and a leaf for the injector Service's DNS names, both ECDSA P-256.
#   deploy/webhook-cert.sh OUT_DIR [SERVICE NAMESPACE DAYS]
# Writes OUT_DIR/ca.crt, OUT_DIR/tls.crt and OUT_DIR/tls.key (mode 0600); the CA key is
# discarded, so renewal means running this again and updating the caBundle.
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

openssl ecparam -name prime256v1 -genkey -noout -out "$work/ca.key"
openssl req -x509 -new -key "$work/ca.key" -sha256 -days "$days" \
  -subj "/CN=airlock injector webhook CA" \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$out/ca.crt"

openssl ecparam -name prime256v1 -genkey -noout -out "$work/leaf.key"
openssl pkcs8 -topk8 -nocrypt -in "$work/leaf.key" -out "$out/tls.key"
openssl req -new -key "$out/tls.key" -subj "/CN=$host" -out "$work/leaf.csr"
cat >"$work/leaf.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:$host,DNS:$host.cluster.local,DNS:$service.$namespace
EXT
openssl x509 -req -in "$work/leaf.csr" -CA "$out/ca.crt" -CAkey "$work/ca.key" \
  -CAcreateserial -CAserial "$work/ca.srl" -sha256 -days "$days" -extfile "$work/leaf.ext" -out "$out/tls.crt"
chmod 644 "$out/ca.crt" "$out/tls.crt"
chmod 600 "$out/tls.key"
echo "wrote $out/ca.crt, $out/tls.crt and $out/tls.key for $host" >&2
