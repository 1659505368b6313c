//! SVID issuance throughput: in process (CSR signature check + template + ECDSA signing)
//! versus end to end over the HTTPS API (TLS 1.3 keep-alive connection, renewal
//! authenticated by the client's SVID). Both paths sign the same CSR, so the difference is
//! the transport: TLS records, HTTP/1.1, JSON, the rate limiter and the audit line.
//!
//! `cargo bench --bench issuance`; README.md reports both and their ratio.

// criterion_group! defines a public function that cannot carry a doc comment.
#![allow(missing_docs)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use airlock_ca::CertificateAuthority;
use airlock_ca::client::CaClient;
use airlock_ca::keys::{KeyFileAccess, Passphrase};
use airlock_ca::listener::serve;
use airlock_ca::server::CaApi;
use airlock_identity::{BundleStore, SpiffeId, SvidStore, tls};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rcgen::{CertificateParams, KeyPair};

fn setup() -> (tempfile::TempDir, CertificateAuthority, Passphrase) {
    let temp = tempfile::tempdir().unwrap();
    let pass_file = temp.path().join("pass");
    std::fs::write(&pass_file, "bench-passphrase").unwrap();
    std::fs::set_permissions(&pass_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let passphrase =
        Passphrase::from_file_or_env(Some(&pass_file), KeyFileAccess::OwnerOnly).unwrap();
    let dir = temp.path().join("ca");
    let ca = CertificateAuthority::init(&dir, "bench.local".parse().unwrap(), &passphrase).unwrap();
    // The benchmark measures signing, not the per-caller rate limit.
    let mut config = ca.config().clone();
    config.rate_limit.per_second = 1e9;
    config.rate_limit.burst = u32::MAX;
    std::fs::write(dir.join("ca.yaml"), config.to_yaml()).unwrap();
    let ca = CertificateAuthority::load(&dir, &passphrase, KeyFileAccess::OwnerOnly).unwrap();
    (temp, ca, passphrase)
}

fn issuance(c: &mut Criterion) {
    let (_temp, ca, passphrase) = setup();
    let id = SpiffeId::parse("spiffe://bench.local/ns/bench/sa/client").unwrap();
    let key = KeyPair::generate().unwrap();
    let csr = CertificateParams::default()
        .serialize_request(&key)
        .unwrap()
        .pem()
        .unwrap();

    let mut group = c.benchmark_group("svid_issuance");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(8));
    group.bench_function("in_process", |b| {
        b.iter(|| {
            ca.issue_from_csr(&csr, &id, None, &Default::default())
                .unwrap()
        });
    });

    // End to end: a real server on loopback and the sidecar's client on one connection.
    // One thread for client and server alike, so both paths get one core: the ratio then
    // shows what TLS, HTTP and JSON cost on top of the signing work.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bundle = BundleStore::new(ca.bundle().clone());
    let store = SvidStore::new(tls::provider());
    let first = ca
        .issue_from_csr(&csr, &id, None, &Default::default())
        .unwrap();
    store
        .install(
            first.chain,
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    let server_ca =
        CertificateAuthority::load(ca.dir(), &passphrase, KeyFileAccess::OwnerOnly).unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    runtime.spawn(serve(
        CaApi::new(server_ca).unwrap(),
        listener,
        std::future::pending(),
    ));
    let client = CaClient::new(&url, bundle, store).unwrap();
    let mut session = runtime.block_on(client.connect()).unwrap();
    group.bench_function("https_keepalive_renewal", |b| {
        b.iter(|| {
            runtime
                .block_on(session.request_svid(&csr, None, None))
                .unwrap()
        });
    });
    group.finish();
}

criterion_group!(benches, issuance);
criterion_main!(benches);
