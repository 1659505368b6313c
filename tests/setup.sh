#!/usr/bin/env bash
# Installs what the end-to-end tests need on Debian: the system tools (openssl, curl,
# testssl, iproute2, iptables, tcpdump, setpriv) and the Python checkers of
# tests/tools/requirements.txt. Only what is missing is installed; run it again at will.
# Uses sudo when not root. README: `tests/setup.sh && cargo test --workspace`.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for pair in openssl:openssl curl:curl python3:python3 pip3:python3-pip testssl:testssl.sh ip:iproute2 iptables:iptables tcpdump:tcpdump setpriv:util-linux; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
  echo "tests/setup.sh: installing ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

has_checkers() {
  python3 -c 'import sys, grpc, cryptography, jsonpatch, jsonschema, yaml; sys.exit(int(cryptography.__version__.split(".")[0]) < 42)' 2>/dev/null \
    && kubernetes-validate --version 2>/dev/null | grep -q 1.37.0
}
if ! has_checkers; then
  echo "tests/setup.sh: installing the Python checkers (tests/tools/requirements.txt)"
  python3 -m pip install -q -r tests/tools/requirements.txt 2>/dev/null \
    || python3 -m pip install -q --break-system-packages -r tests/tools/requirements.txt
fi
if ! has_checkers; then
  echo "tests/setup.sh: the Python checkers are still not importable, or kubernetes-validate is not on PATH" >&2
  exit 1
fi
