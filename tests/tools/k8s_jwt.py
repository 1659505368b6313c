#!/usr/bin/env python3
"""Plays a Kubernetes API server for the CA's tests: an RSA service-account signing key,
its JWKS, and RS256-signed projected tokens, all made with the `cryptography` package
(independent of airlock's own JWT code).

    k8s_jwt.py keygen DIR             -> DIR/sa.key (PEM) and DIR/jwks.json
    k8s_jwt.py sign DIR CLAIMS_JSON   -> prints the token
"""
import base64
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

KID = "sa-key-1"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 7) // 8, "big")


def keygen(directory: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (directory / "sa.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    numbers = key.public_key().public_numbers()
    jwks = {
        "keys": [
            {
                "kty": "RSA",
                "alg": "RS256",
                "use": "sig",
                "kid": KID,
                "n": b64url(int_bytes(numbers.n)),
                "e": b64url(int_bytes(numbers.e)),
            }
        ]
    }
    (directory / "jwks.json").write_text(json.dumps(jwks))


def sign(directory: Path, claims: dict) -> str:
    key = serialization.load_pem_private_key((directory / "sa.key").read_bytes(), None)
    header = {"alg": "RS256", "typ": "JWT", "kid": KID}
    signing_input = (
        b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    )
    signature = key.sign(signing_input.encode(), padding.PKCS1v15(), hashes.SHA256())
    return signing_input + "." + b64url(signature)


if __name__ == "__main__":
    command, directory = sys.argv[1], Path(sys.argv[2])
    if command == "keygen":
        keygen(directory)
    elif command == "sign":
        print(sign(directory, json.loads(sys.argv[3])))
    else:
        sys.exit(f"unknown command {command}")
