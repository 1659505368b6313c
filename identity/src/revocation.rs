//! The deny list of SVIDs: certificates revoked by serial, and identities revoked whole.
//!
//! The CA keeps it in one JSON file that `airlock ca revoke` edits and `airlock ca serve`
//! re-reads; sidecars fetch the same document with the trust bundle. It travels inside
//! [`crate::TrustBundle`], so every verifier that reads the bundle refuses a revoked peer
//! in the handshake, with no second lookup to forget.
//!
//! A serial entry is dropped once the certificate it names must have expired (the CA's
//! `max_ttl` after the revocation), so the list stays as small as the compromises are
//! recent. An identity entry stays until an operator lifts it.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::spiffe_id::SpiffeId;
use crate::svid::LeafSvid;

/// One certificate, named by its serial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedSerial {
    /// Lower-case hex, as `openssl x509 -serial` prints it (without leading zero bytes
    /// that DER adds, see [`normalize_serial`]).
    pub serial: String,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Unix seconds after which no certificate with this serial can still be valid.
    pub expires_at: i64,
    /// Free text from `airlock ca revoke --reason`, for operators; `None` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every SVID of one identity, and every new issuance for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokedIdentity {
    /// The revoked workload; matched literally against a peer's SVID and a CSR's identity.
    pub spiffe_id: SpiffeId,
    /// Unix seconds.
    pub revoked_at: i64,
    /// Free text from `airlock ca revoke --reason`, for operators; `None` when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The document as stored and served (`GET /v1/revocations`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationDocument {
    /// Revoked certificates; may still hold lapsed entries until [`Revocations::new`]
    /// filters them. Empty when the key is absent.
    #[serde(default)]
    pub serials: Vec<RevokedSerial>,
    /// Revoked identities. Empty when the key is absent.
    #[serde(default)]
    pub spiffe_ids: Vec<RevokedIdentity>,
}

/// Why a certificate is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// The certificate's serial is on the list (and its entry has not lapsed).
    Serial,
    /// Its SPIFFE ID is revoked, whatever the serial; checked before serials.
    Identity,
}

/// The deny list, indexed for the handshake path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revocations {
    document: RevocationDocument,
    serials: HashSet<String>,
    identities: HashSet<SpiffeId>,
}

impl Revocations {
    /// Indexes a document, keeping only the serial entries still in force at `now`.
    pub fn new(mut document: RevocationDocument, now: i64) -> Self {
        document.serials.retain(|entry| entry.expires_at > now);
        for entry in &mut document.serials {
            entry.serial = normalize_serial(&entry.serial);
        }
        Self {
            serials: document.serials.iter().map(|e| e.serial.clone()).collect(),
            identities: document
                .spiffe_ids
                .iter()
                .map(|e| e.spiffe_id.clone())
                .collect(),
            document,
        }
    }

    /// Parses the JSON form; `origin` names it in the error.
    pub fn from_json(bytes: &[u8], origin: &str, now: i64) -> Result<Self, String> {
        let document = serde_json::from_slice(bytes).map_err(|e| format!("{origin}: {e}"))?;
        Ok(Self::new(document, now))
    }

    /// The entries in force, with normalized serials: what the CA rewrites and serves.
    pub fn document(&self) -> &RevocationDocument {
        &self.document
    }

    /// Whether nothing is revoked (no serial or identity entry in force).
    pub fn is_empty(&self) -> bool {
        self.serials.is_empty() && self.identities.is_empty()
    }

    /// Whether `svid` is revoked, and by which kind of entry.
    pub fn check(&self, svid: &LeafSvid) -> Option<Revoked> {
        if self.identities.contains(&svid.id) {
            return Some(Revoked::Identity);
        }
        if !self.serials.is_empty() && self.serials.contains(&normalize_serial(&svid.serial_hex)) {
            return Some(Revoked::Serial);
        }
        None
    }

    /// Whether new certificates for `id` are refused.
    pub fn revokes_identity(&self, id: &SpiffeId) -> bool {
        self.identities.contains(id)
    }
}

/// A serial as one spelling: lower case, no `:` separators, whole octets (`abc` is
/// `0abc`), no leading zero octets (DER prepends one when the high bit is set; openssl
/// prints it, x509-parser keeps it).
pub fn normalize_serial(serial: &str) -> String {
    let mut hex: String = serial
        .chars()
        .filter(|c| *c != ':')
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if hex.len() % 2 == 1 {
        hex.insert(0, '0');
    }
    let trimmed = hex.trim_start_matches("00");
    if trimmed.is_empty() {
        "00".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svid(id: &str, serial: &str) -> LeafSvid {
        LeafSvid {
            id: SpiffeId::parse(id).unwrap(),
            not_before: 0,
            not_after: 100,
            serial_hex: serial.to_owned(),
        }
    }

    #[test]
    fn serials_and_identities_are_refused_until_their_entries_lapse() {
        let document = RevocationDocument {
            serials: vec![
                RevokedSerial {
                    serial: "00:AB:CD".into(),
                    revoked_at: 10,
                    expires_at: 1000,
                    reason: None,
                },
                RevokedSerial {
                    serial: "ee".into(),
                    revoked_at: 10,
                    expires_at: 50,
                    reason: None,
                },
            ],
            spiffe_ids: vec![RevokedIdentity {
                spiffe_id: SpiffeId::parse("spiffe://td/ns/a/sa/bad").unwrap(),
                revoked_at: 10,
                reason: Some("key leaked".into()),
            }],
        };
        let list = Revocations::new(document, 100);
        let cases = [
            ("spiffe://td/ns/a/sa/ok", "abcd", Some(Revoked::Serial)),
            ("spiffe://td/ns/a/sa/ok", "00abcd", Some(Revoked::Serial)),
            ("spiffe://td/ns/a/sa/ok", "ABCD", Some(Revoked::Serial)),
            ("spiffe://td/ns/a/sa/ok", "abce", None),
            // Lapsed: a certificate with this serial has expired by now anyway.
            ("spiffe://td/ns/a/sa/ok", "ee", None),
            ("spiffe://td/ns/a/sa/bad", "1234", Some(Revoked::Identity)),
            ("spiffe://td/ns/a/sa/badly", "1234", None),
        ];
        for (id, serial, want) in cases {
            assert_eq!(list.check(&svid(id, serial)), want, "{id} {serial}");
        }
        assert_eq!(list.document().serials.len(), 1, "the lapsed entry is gone");
        assert!(list.revokes_identity(&SpiffeId::parse("spiffe://td/ns/a/sa/bad").unwrap()));
        assert!(Revocations::default().is_empty());
    }

    #[test]
    fn the_json_form_is_strict() {
        let ok = br#"{"serials": [], "spiffe_ids": [{"spiffe_id": "spiffe://td/ns/a/sa/b", "revoked_at": 1}]}"#;
        assert!(Revocations::from_json(ok, "r.json", 0).is_ok());
        for bad in [
            &br#"{"serial": []}"#[..],
            br#"{"spiffe_ids": [{"spiffe_id": "spiffe://td", "revoked_at": 1}]}"#,
            b"not json",
        ] {
            let err = Revocations::from_json(bad, "r.json", 0).unwrap_err();
            assert!(err.starts_with("r.json: "), "{err}");
        }
    }

    #[test]
    fn serial_spellings() {
        for (input, want) in [
            ("00:8f:01", "8f01"),
            ("8F01", "8f01"),
            ("0000", "00"),
            ("0a", "0a"),
            ("abc", "0abc"),
            ("00abc", "0abc"),
        ] {
            assert_eq!(normalize_serial(input), want, "{input}");
        }
    }
}
