#!/usr/bin/env python3
"""Checks an X.509-SVID chain against the SPIFFE X509-SVID checklist with the
`cryptography` package, independently of airlock's own parser.

    check_svid.py CHAIN_PEM EXPECTED_SPIFFE_ID

Prints one line per failed rule and exits 1 on any; prints "ok" otherwise.
"""
import sys

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID

chain = x509.load_pem_x509_certificates(open(sys.argv[1], "rb").read())
expected = sys.argv[2]
leaf, signer = chain[0], chain[1]
problems = []


def ext(cert, oid):
    try:
        return cert.extensions.get_extension_for_oid(oid)
    except x509.ExtensionNotFound:
        return None


san = ext(leaf, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
if san is None:
    problems.append("leaf has no SAN")
else:
    uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [expected]:
        problems.append(f"URI SANs {uris} != [{expected}]")
    others = [n for n in san.value if not isinstance(n, x509.UniformResourceIdentifier)]
    if others:
        problems.append(f"unexpected non-URI SANs {others}")
    if len(leaf.subject) == 0 and not san.critical:
        problems.append("SAN not critical although the subject is empty")
if len(leaf.subject) != 0:
    problems.append(f"subject not empty: {leaf.subject.rfc4514_string()}")

bc = ext(leaf, ExtensionOID.BASIC_CONSTRAINTS)
if bc is None or bc.value.ca:
    problems.append("leaf basicConstraints missing or cA=true")
ku = ext(leaf, ExtensionOID.KEY_USAGE)
if ku is None or not ku.critical:
    problems.append("leaf keyUsage missing or not critical")
else:
    v = ku.value
    if not v.digital_signature:
        problems.append("leaf keyUsage lacks digitalSignature")
    if v.key_cert_sign or v.crl_sign:
        problems.append("leaf keyUsage allows certificate or CRL signing")
eku = ext(leaf, ExtensionOID.EXTENDED_KEY_USAGE)
if eku is None or set(eku.value) != {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}:
    problems.append("leaf EKU is not exactly serverAuth+clientAuth")
if ext(leaf, ExtensionOID.SUBJECT_KEY_IDENTIFIER) is None:
    problems.append("leaf lacks subjectKeyIdentifier")
aki = ext(leaf, ExtensionOID.AUTHORITY_KEY_IDENTIFIER)
ski = ext(signer, ExtensionOID.SUBJECT_KEY_IDENTIFIER)
if aki is None or ski is None or aki.value.key_identifier != ski.value.digest:
    problems.append("leaf AKI does not match the issuer's SKI")
if leaf.serial_number.bit_length() < 100:
    problems.append(f"serial looks too short: {leaf.serial_number.bit_length()} bits")
if not isinstance(leaf.public_key(), ec.EllipticCurvePublicKey):
    problems.append("leaf key is not EC")
if leaf.not_valid_after_utc > signer.not_valid_after_utc:
    problems.append("leaf outlives its issuer")

sbc = ext(signer, ExtensionOID.BASIC_CONSTRAINTS)
sku = ext(signer, ExtensionOID.KEY_USAGE)
if sbc is None or not sbc.value.ca:
    problems.append("signing cert is not a CA")
if sku is None or not sku.value.key_cert_sign:
    problems.append("signing cert lacks keyCertSign")
ssan = ext(signer, ExtensionOID.SUBJECT_ALTERNATIVE_NAME)
if ssan is not None:
    for uri in ssan.value.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.count("/") > 2:
            problems.append(f"signing cert SPIFFE ID has a path: {uri}")

for p in problems:
    print(p)
print("ok" if not problems else f"{len(problems)} problem(s)")
sys.exit(1 if problems else 0)
