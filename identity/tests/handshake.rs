//! Real rustls handshakes (in memory) through the SPIFFE verifiers and the live store.

use std::sync::Arc;

use airlock_identity::verifier::PeerMatch;
use airlock_identity::{BundleStore, SpiffeId, SvidStore, TrustBundle, TrustDomain, tls};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConnection, ServerConnection};
use time::{Duration, OffsetDateTime};

struct Ca {
    root: CertificateDer<'static>,
    params: CertificateParams,
    key: KeyPair,
}

impl Ca {
    fn new(trust_domain: &str) -> Self {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(
            format!("spiffe://{trust_domain}").try_into().unwrap(),
        )];
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let root = params.self_signed(&key).unwrap().der().clone();
        Self { root, params, key }
    }

    fn bundle(&self, trust_domain: &str) -> Arc<BundleStore> {
        let td = TrustDomain::parse(trust_domain).unwrap();
        BundleStore::new(TrustBundle::new(td, vec![self.root.clone()], "test").unwrap())
    }

    fn leaf(
        &self,
        id: &str,
        lifetime: (Duration, Duration),
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now + lifetime.0;
        params.not_after = now + lifetime.1;
        let key = KeyPair::generate().unwrap();
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        (vec![cert.der().clone()], key_der)
    }
}

const VALID: (Duration, Duration) = (Duration::minutes(-1), Duration::hours(1));

fn store_with(chain_key: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)) -> Arc<SvidStore> {
    let store = SvidStore::new(tls::provider());
    store.install(chain_key.0, chain_key.1).unwrap();
    store
}

/// Drives a handshake to completion in memory; returns the server's view of the client.
fn handshake(
    client: &mut ClientConnection,
    server: &mut ServerConnection,
) -> Result<Option<SpiffeId>, rustls::Error> {
    for _ in 0..10 {
        let mut buf = Vec::new();
        client.write_tls(&mut buf).unwrap();
        server.read_tls(&mut buf.as_slice()).unwrap();
        if let Err(e) = server.process_new_packets() {
            let mut alert = Vec::new();
            let _ = server.write_tls(&mut alert);
            return Err(e);
        }
        let mut buf = Vec::new();
        server.write_tls(&mut buf).unwrap();
        client.read_tls(&mut buf.as_slice()).unwrap();
        client.process_new_packets()?;
        if !client.is_handshaking() && !server.is_handshaking() {
            return Ok(airlock_identity::peer_id(server));
        }
    }
    panic!("handshake did not finish");
}

fn connect(
    server_store: Arc<SvidStore>,
    server_bundle: Arc<BundleStore>,
    client_store: Arc<SvidStore>,
    client_bundle: Arc<BundleStore>,
    expect: PeerMatch,
) -> Result<Option<SpiffeId>, rustls::Error> {
    let server_config = tls::server_config(server_store, server_bundle, true, &[b"h2"]);
    let client_config = tls::client_config(client_store, client_bundle, expect, &[b"h2"]);
    handshake_between(server_config, client_config)
}

fn handshake_between(
    server: rustls::ServerConfig,
    client: rustls::ClientConfig,
) -> Result<Option<SpiffeId>, rustls::Error> {
    let mut server = ServerConnection::new(Arc::new(server)).unwrap();
    let mut client = ClientConnection::new(
        Arc::new(client),
        ServerName::try_from("mesh.invalid").unwrap(),
    )
    .unwrap();
    handshake(&mut client, &mut server)
}

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

#[test]
fn mutual_spiffe_handshake_exposes_peer_identity() {
    let ca = Ca::new("td");
    let server = store_with(ca.leaf("spiffe://td/ns/pay/sa/api", VALID));
    let client = store_with(ca.leaf("spiffe://td/ns/shop/sa/checkout", VALID));
    let peer = connect(
        server,
        ca.bundle("td"),
        client,
        ca.bundle("td"),
        PeerMatch::Exactly(id("spiffe://td/ns/pay/sa/api")),
    )
    .unwrap();
    assert_eq!(peer, Some(id("spiffe://td/ns/shop/sa/checkout")));
}

#[test]
fn refusals() {
    let ca = Ca::new("td");
    let other_ca = Ca::new("td");
    let foreign_ca = Ca::new("other");
    let good_server = || store_with(ca.leaf("spiffe://td/ns/pay/sa/api", VALID));
    let good_client = || store_with(ca.leaf("spiffe://td/ns/shop/sa/web", VALID));
    let expect_api = || PeerMatch::Exactly(id("spiffe://td/ns/pay/sa/api"));

    // The server is not who the client expects.
    let err = connect(
        good_server(),
        ca.bundle("td"),
        good_client(),
        ca.bundle("td"),
        PeerMatch::Exactly(id("spiffe://td/ns/pay/sa/db")),
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("expected spiffe://td/ns/pay/sa/db"),
        "{err}"
    );

    // A client signed by a CA the server does not trust.
    let rogue = store_with(other_ca.leaf("spiffe://td/ns/shop/sa/web", VALID));
    let err = connect(
        good_server(),
        ca.bundle("td"),
        rogue,
        ca.bundle("td"),
        expect_api(),
    )
    .unwrap_err();
    // Same (empty) issuer name, other key: webpki finds the name but not the signature.
    assert!(
        err.to_string().contains("BadSignature") || err.to_string().contains("UnknownIssuer"),
        "{err}"
    );

    // An expired client certificate: the store no longer presents it (so the handshake
    // fails for want of a certificate), and rustls clients that do present one are
    // refused by the verifier (the openssl s_client test in tests/mesh.rs covers that).
    let expired = store_with(ca.leaf(
        "spiffe://td/ns/shop/sa/web",
        (Duration::hours(-2), Duration::hours(-1)),
    ));
    assert!(!rustls::client::ResolvesClientCert::has_certs(&*expired));
    let err = connect(
        good_server(),
        ca.bundle("td"),
        expired,
        ca.bundle("td"),
        expect_api(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("no certificates"), "{err}");

    // A chain-valid SVID whose ID lies in another trust domain than the bundle's.
    let foreign_td_bundle = {
        let td = TrustDomain::parse("td").unwrap();
        BundleStore::new(TrustBundle::new(td, vec![ca.root.clone()], "t").unwrap())
    };
    let smuggled = store_with(ca.leaf("spiffe://other/ns/shop/sa/web", VALID));
    let err = connect(
        good_server(),
        foreign_td_bundle,
        smuggled,
        ca.bundle("td"),
        expect_api(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("outside trust domain td"), "{err}");

    // A client without any certificate where one is mandatory.
    let empty = SvidStore::new(tls::provider());
    assert!(
        connect(
            good_server(),
            ca.bundle("td"),
            empty,
            ca.bundle("td"),
            expect_api()
        )
        .is_err()
    );

    // Bundles refuse roots of another trust domain outright.
    let td = TrustDomain::parse("td").unwrap();
    assert!(TrustBundle::new(td, vec![foreign_ca.root.clone()], "t").is_err());
}

#[test]
fn store_swap_applies_to_the_next_handshake_only() {
    let ca = Ca::new("td");
    let server = store_with(ca.leaf("spiffe://td/ns/pay/sa/api", VALID));
    let client = store_with(ca.leaf("spiffe://td/ns/shop/sa/web", VALID));
    let server_config = Arc::new(tls::server_config(
        server.clone(),
        ca.bundle("td"),
        true,
        &[],
    ));
    let client_config = Arc::new(tls::client_config(
        client,
        ca.bundle("td"),
        PeerMatch::AnyInTrustDomain,
        &[],
    ));
    let name = ServerName::try_from("mesh.invalid").unwrap();

    let mut first_s = ServerConnection::new(server_config.clone()).unwrap();
    let mut first_c = ClientConnection::new(client_config.clone(), name.clone()).unwrap();
    handshake(&mut first_c, &mut first_s).unwrap();
    let first_serial = leaf_serial(&first_c);

    server
        .install(
            ca.leaf("spiffe://td/ns/pay/sa/api", VALID).0,
            ca.leaf("spiffe://td/ns/pay/sa/api", VALID).1,
        )
        .expect_err("a key that does not match the certificate is refused");
    let (chain, key) = ca.leaf("spiffe://td/ns/pay/sa/api", VALID);
    server.install(chain, key).unwrap();

    let mut second_s = ServerConnection::new(server_config).unwrap();
    let mut second_c = ClientConnection::new(client_config, name).unwrap();
    handshake(&mut second_c, &mut second_s).unwrap();
    assert_ne!(first_serial, leaf_serial(&second_c));
    // The established connection still carries the certificate it negotiated.
    assert_eq!(first_serial, leaf_serial(&first_c));
}

fn leaf_serial(client: &ClientConnection) -> Vec<u8> {
    client.peer_certificates().unwrap()[0].to_vec()
}

#[test]
fn jwks_bundle_shape() {
    let ca = Ca::new("td");
    let bundle = ca.bundle("td").current();
    let jwks = bundle.to_jwks().unwrap();
    let key = &jwks["keys"][0];
    assert_eq!(key["use"], "x509-svid");
    assert_eq!(key["kty"], "EC");
    assert_eq!(key["crv"], "P-256");
    assert_eq!(key["x5c"].as_array().unwrap().len(), 1);
    assert!(key.get("kid").is_none());
    assert_eq!(jwks["spiffe_sequence"], 1);
    assert!(jwks["spiffe_refresh_hint"].as_u64().unwrap() > 0);
    let reparsed = TrustBundle::from_pem(
        TrustDomain::parse("td").unwrap(),
        bundle.to_pem().as_bytes(),
        "pem",
    )
    .unwrap();
    assert_eq!(reparsed.roots(), bundle.roots());
}

/// A server that presents `chain` without the SVID store's own checks (as a rogue peer
/// holding a leaf signed by the real issuer could), to a SPIFFE client.
fn client_meets(
    chain: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    bundle: Arc<BundleStore>,
) -> Result<Option<SpiffeId>, rustls::Error> {
    let server_config = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain.0, chain.1)
        .unwrap();
    let client_config = tls::client_config(
        SvidStore::new(tls::provider()),
        bundle,
        PeerMatch::AnyInTrustDomain,
        &[],
    );
    handshake_between(server_config, client_config)
}

#[test]
fn the_client_verifier_refuses_a_server_named_by_the_trust_domain_alone() {
    let ca = Ca::new("td");
    assert!(
        client_meets(ca.leaf("spiffe://td/ns/pay/sa/api", VALID), ca.bundle("td")).is_ok(),
        "control: a workload leaf from the same issuer"
    );
    let err = client_meets(ca.leaf("spiffe://td", VALID), ca.bundle("td")).unwrap_err();
    assert!(err.to_string().contains("must have a path"), "{err}");
}

#[test]
fn revoked_peers_are_refused_on_both_sides() {
    use airlock_identity::revocation::{RevocationDocument, RevokedIdentity, RevokedSerial};
    let ca = Ca::new("td");
    let server_leaf = ca.leaf("spiffe://td/ns/pay/sa/api", VALID);
    let client_leaf = ca.leaf("spiffe://td/ns/shop/sa/web", VALID);
    let serial = |chain: &[CertificateDer<'static>]| {
        airlock_identity::svid::inspect_leaf(&chain[0])
            .unwrap()
            .serial_hex
    };
    let revoking = |document: RevocationDocument| {
        let td = TrustDomain::parse("td").unwrap();
        let bundle = TrustBundle::new(td, vec![ca.root.clone()], "t")
            .unwrap()
            .with_revocations(airlock_identity::Revocations::new(document, 0));
        BundleStore::new(bundle)
    };
    let by_serial = |serial: String| RevocationDocument {
        serials: vec![RevokedSerial {
            serial,
            revoked_at: 0,
            expires_at: i64::MAX,
            reason: None,
        }],
        spiffe_ids: vec![],
    };
    let expect_api = || PeerMatch::Exactly(id("spiffe://td/ns/pay/sa/api"));
    let connect_with = |server_bundle, client_bundle| {
        connect(
            store_with(ca.leaf("spiffe://td/ns/pay/sa/api", VALID)),
            server_bundle,
            store_with(ca.leaf("spiffe://td/ns/shop/sa/web", VALID)),
            client_bundle,
            expect_api(),
        )
    };
    assert!(
        connect_with(ca.bundle("td"), ca.bundle("td")).is_ok(),
        "control"
    );

    // The client's serial, on the server's list.
    let err = connect(
        store_with((server_leaf.0.clone(), server_leaf.1.clone_key())),
        revoking(by_serial(serial(&client_leaf.0))),
        store_with((client_leaf.0.clone(), client_leaf.1.clone_key())),
        ca.bundle("td"),
        expect_api(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Revoked"), "{err}");
    // The server's serial, on the client's list.
    let err = connect(
        store_with((server_leaf.0.clone(), server_leaf.1.clone_key())),
        ca.bundle("td"),
        store_with((client_leaf.0.clone(), client_leaf.1.clone_key())),
        revoking(by_serial(serial(&server_leaf.0))),
        expect_api(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("Revoked"), "{err}");
    // A whole identity: any of its SVIDs.
    let whole = RevocationDocument {
        serials: vec![],
        spiffe_ids: vec![RevokedIdentity {
            spiffe_id: id("spiffe://td/ns/shop/sa/web"),
            revoked_at: 0,
            reason: None,
        }],
    };
    let err = connect_with(revoking(whole), ca.bundle("td")).unwrap_err();
    assert!(err.to_string().contains("Revoked"), "{err}");
}
