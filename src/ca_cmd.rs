//! `airlock ca …`: thin glue from flags to the `airlock-ca` crate.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use airlock_ca::CertificateAuthority;
use airlock_ca::authority::{CaError, IssueError};
use airlock_ca::keys::{KeyError, KeyFileAccess, Passphrase};
use airlock_ca::listener::serve;
use airlock_ca::reload::LiveCa;
use airlock_ca::revocations::{RevocationError, RevocationStore, Target};
use airlock_ca::server::CaApi;
use airlock_ca::tokens::{TokenError, TokenStore};
use airlock_identity::{SpiffeId, TrustDomain};
use clap::{Args, Subcommand};

use crate::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum CaCommand {
    /// Create a CA directory: root and issuing CA (ECDSA P-256), encrypted keys, bundle.
    Init {
        #[command(flatten)]
        dir: CaDir,
        /// Trust domain of every identity this CA issues, e.g. `prod.example.com`.
        #[arg(long, value_parser = parse_trust_domain)]
        trust_domain: TrustDomain,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Serve the CA's HTTPS API.
    Serve {
        #[command(flatten)]
        dir: CaDir,
        /// Listen address (default: `listen` in ca.yaml, 127.0.0.1:15012).
        #[arg(long)]
        listen: Option<SocketAddr>,
        #[command(flatten)]
        passphrase: PassphraseArg,
        /// Accept an issuing key and passphrase file that their group may read, when it
        /// is this process's group (never others): Kubernetes mounts Secrets as mode
        /// 0440 owned by the pod's fsGroup.
        #[arg(long)]
        allow_group_readable_keys: bool,
    },
    /// Manage join tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Operator path: issue an SVID for a CSR and print the chain PEM (leaf first).
    Issue {
        #[command(flatten)]
        dir: CaDir,
        /// The identity to certify (the CSR's own names are ignored).
        #[arg(long, value_parser = parse_spiffe_id)]
        spiffe_id: SpiffeId,
        /// PEM CSR file, or `-` for standard input.
        #[arg(long)]
        csr: PathBuf,
        /// Lifetime, e.g. `30m` (default: default_ttl in ca.yaml).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Rotate the issuing CA (and with --root the root), printing the overlap.
    ///
    /// Example: airlock ca rotate --dir /etc/airlock-ca --keep-renewals
    Rotate {
        #[command(flatten)]
        dir: CaDir,
        /// Also make a new root; the old one stays in the bundle until every SVID it
        /// signed has expired.
        #[arg(long)]
        root: bool,
        /// Let SVIDs of the retired issuing CA renew until they expire (default: they must
        /// authenticate again with a join token or service-account token).
        #[arg(long)]
        keep_renewals: bool,
        #[command(flatten)]
        passphrase: PassphraseArg,
    },
    /// Revoke one SVID by serial, or every SVID of an identity; `--lift` takes an entry
    /// back. A running `ca serve` and every sidecar (at its next bundle refresh) apply it.
    ///
    /// Example: airlock ca revoke --dir D --spiffe-id spiffe://td/ns/shop/sa/cart --reason "key leaked"
    Revoke {
        #[command(flatten)]
        dir: CaDir,
        /// The certificate serial in hex, as `openssl x509 -serial` prints it.
        #[arg(
            long,
            required_unless_present = "spiffe_id",
            conflicts_with = "spiffe_id"
        )]
        serial: Option<String>,
        /// Every SVID of this identity, and every new issuance for it.
        #[arg(long, value_parser = parse_spiffe_id)]
        spiffe_id: Option<SpiffeId>,
        /// Why, for the record (kept in the list; never a secret).
        #[arg(long)]
        reason: Option<String>,
        /// Remove the entry instead of adding it.
        #[arg(long, conflicts_with = "reason")]
        lift: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Create a join token bound to one SPIFFE ID; prints the token once.
    Create {
        #[command(flatten)]
        dir: CaDir,
        #[arg(long, value_parser = parse_spiffe_id)]
        spiffe_id: SpiffeId,
        /// How long the token may be redeemed, e.g. `15m`.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "1h")]
        ttl: Duration,
        /// How many times it may be redeemed.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CaDir {
    /// The CA directory.
    #[arg(long = "dir", value_name = "DIR")]
    path: PathBuf,
}

#[derive(Debug, Args)]
pub(crate) struct PassphraseArg {
    /// File holding the CA key passphrase (mode 0600); default: $AIRLOCK_CA_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

impl PassphraseArg {
    fn read(&self, access: KeyFileAccess) -> Result<Passphrase, Failure> {
        Passphrase::from_file_or_env(self.passphrase_file.as_deref(), access)
            .map_err(Failure::usage)
    }
}

fn parse_trust_domain(text: &str) -> Result<TrustDomain, String> {
    TrustDomain::parse(text).map_err(|e| e.to_string())
}

fn parse_spiffe_id(text: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(text).map_err(|e| e.to_string())
}

fn ca_failure(error: CaError) -> Failure {
    match error {
        CaError::Config(_)
        | CaError::NotACaDir(_)
        | CaError::AlreadyExists(_)
        | CaError::Key(KeyError::ShortPassphrase { .. }) => Failure::usage(error),
        other => Failure::failed(other),
    }
}

pub(crate) fn run(command: CaCommand) -> Result<(), Failure> {
    match command {
        CaCommand::Init {
            dir,
            trust_domain,
            passphrase,
        } => {
            let ca = CertificateAuthority::init(
                &dir.path,
                trust_domain,
                &passphrase.read(KeyFileAccess::OwnerOnly)?,
            )
            .map_err(ca_failure)?;
            println!(
                "created CA for trust domain {} in {}\n  trust bundle: {}",
                ca.trust_domain(),
                dir.path.display(),
                dir.path.join("bundle.pem").display()
            );
            Ok(())
        }
        CaCommand::Serve {
            dir,
            listen,
            passphrase,
            allow_group_readable_keys,
        } => {
            let access = if allow_group_readable_keys {
                KeyFileAccess::OwnerAndGroup
            } else {
                KeyFileAccess::OwnerOnly
            };
            serve_ca(&dir.path, listen, passphrase.read(access)?, access)
        }
        CaCommand::Rotate {
            dir,
            root,
            keep_renewals,
            passphrase,
        } => rotate(&dir.path, root, keep_renewals, &passphrase),
        CaCommand::Revoke {
            dir,
            serial,
            spiffe_id,
            reason,
            lift,
        } => {
            let target = match (serial, spiffe_id) {
                (Some(serial), _) => Target::Serial(serial),
                (None, Some(id)) => Target::Identity(id),
                (None, None) => unreachable!("clap requires one of them"),
            };
            revoke(&dir.path, &target, reason, lift)
        }
        CaCommand::Token {
            command:
                TokenCommand::Create {
                    dir,
                    spiffe_id,
                    ttl,
                    uses,
                },
        } => {
            let config = CertificateAuthority::load_config(&dir.path).map_err(ca_failure)?;
            if spiffe_id == airlock_ca::wire::ca_server_id(&config.trust_domain) {
                return Err(Failure::usage(format!(
                    "--spiffe-id {spiffe_id} is reserved for the CA itself"
                )));
            }
            if spiffe_id.trust_domain() != config.trust_domain {
                return Err(Failure::usage(format!(
                    "--spiffe-id {spiffe_id} is outside this CA's trust domain {}",
                    config.trust_domain
                )));
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let token = TokenStore::new(&dir.path)
                .create(&spiffe_id, ttl, uses, now)
                .map_err(|e| match e {
                    TokenError::ZeroUses => Failure::usage(e),
                    other => Failure::failed(other),
                })?;
            println!("{}", token.token);
            eprintln!(
                "join token for {spiffe_id}: {uses} use(s), expires in {}",
                humantime::format_duration(ttl)
            );
            Ok(())
        }
        CaCommand::Issue {
            dir,
            spiffe_id,
            csr,
            ttl,
            passphrase,
        } => {
            let csr_pem = read_input(&csr)?;
            let ca = CertificateAuthority::load(
                &dir.path,
                &passphrase.read(KeyFileAccess::OwnerOnly)?,
                KeyFileAccess::OwnerOnly,
            )
            .map_err(ca_failure)?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let revocations = ca.revocation_store().load(now).map_err(Failure::failed)?;
            let issued = ca
                .issue_from_csr(&csr_pem, &spiffe_id, ttl, &revocations)
                .map_err(|e| match e {
                    IssueError::Csr(e) => Failure::failed(format!("{}: {e}", csr.display())),
                    IssueError::TtlTooLong { .. } | IssueError::TtlZero => {
                        Failure::usage(format!("--ttl: {e}"))
                    }
                    IssueError::ForeignTrustDomain { .. }
                    | IssueError::ReservedIdentity(_)
                    | IssueError::Revoked(_) => Failure::usage(format!("--spiffe-id: {e}")),
                    other => Failure::failed(other),
                })?;
            let mut stdout = std::io::stdout().lock();
            for pem in issued.chain_pem() {
                stdout.write_all(pem.as_bytes()).map_err(Failure::failed)?;
            }
            Ok(())
        }
    }
}

fn read_input(path: &Path) -> Result<String, Failure> {
    let mut text = String::new();
    let result = if path == Path::new("-") {
        std::io::stdin().read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(path).map(|t| text = t)
    };
    result.map_err(|e| Failure::failed(format!("--csr {}: {e}", path.display())))?;
    Ok(text)
}

fn serve_ca(
    dir: &Path,
    listen: Option<SocketAddr>,
    passphrase: Passphrase,
    access: KeyFileAccess,
) -> Result<(), Failure> {
    crate::logging::init_json();
    let ca = CertificateAuthority::load(dir, &passphrase, access).map_err(ca_failure)?;
    let listen = listen.unwrap_or(ca.config().listen);
    let trust_domain = ca.trust_domain().clone();
    let live = LiveCa::new(ca)
        .map_err(Failure::failed)?
        .reloading_keys(passphrase, access);
    let api = CaApi::from_live(live);
    let runtime = tokio::runtime::Runtime::new().map_err(Failure::failed)?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Failure::failed(format!("cannot listen on {listen}: {e}")))?;
        let local = listener.local_addr().map_err(Failure::failed)?;
        println!("airlock CA listening on https://{local} (trust domain {trust_domain})");
        std::io::stdout().flush().map_err(Failure::failed)?;
        serve(api, listener, crate::logging::shutdown_signal())
            .await
            .map_err(Failure::failed)
    })
}

fn rotate(
    dir: &Path,
    root: bool,
    keep_renewals: bool,
    passphrase: &PassphraseArg,
) -> Result<(), Failure> {
    let passphrase = passphrase.read(KeyFileAccess::OwnerOnly)?;
    let rotation =
        airlock_ca::rotation::rotate(dir, &passphrase, root, keep_renewals).map_err(ca_failure)?;
    let when = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|_| t.unix_timestamp().to_string())
    };
    println!(
        "rotated the issuing CA in {}: serial {}, valid until {}",
        dir.display(),
        rotation.issuing_serial,
        when(rotation.issuing_not_after)
    );
    match rotation.renewals_kept_until {
        Some(until) => println!(
            "  SVIDs of the previous issuing CA may renew until they expire, at the latest {}",
            when(until)
        ),
        None => println!(
            "  SVIDs of the previous issuing CA stay valid until they expire but cannot renew: their workloads authenticate again (service-account or join token)"
        ),
    }
    if let Some(until) = rotation.previous_root_until {
        println!(
            "  new root added to bundle.pem; the previous root stays trusted until {} (when every SVID it signed has expired), then leaves the bundle",
            when(until)
        );
        println!(
            "  sidecars trust the new root at their next bundle refresh or renewal; a running `ca serve` switches within seconds"
        );
    }
    if rotation.dropped_roots > 0 {
        println!(
            "  {} retired root(s) past their time left bundle.pem",
            rotation.dropped_roots
        );
    }
    Ok(())
}

fn revoke(dir: &Path, target: &Target, reason: Option<String>, lift: bool) -> Result<(), Failure> {
    let config = CertificateAuthority::load_config(dir).map_err(ca_failure)?;
    let store = RevocationStore::new(dir.join(&config.revocation_file));
    let failure = |e: RevocationError| match e {
        RevocationError::BadSerial(_) | RevocationError::NotRevoked(_) => Failure::usage(e),
        RevocationError::File(_) => Failure::failed(e),
    };
    if lift {
        store.lift(target).map_err(failure)?;
        println!(
            "lifted the revocation of {target} in {}",
            store.path().display()
        );
        return Ok(());
    }
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    store
        .revoke(target, reason, now, config.max_ttl)
        .map_err(failure)?;
    println!("revoked {target} in {}", store.path().display());
    println!(
        "  a running `ca serve` applies it within seconds; sidecars refuse the peer after their next bundle refresh"
    );
    Ok(())
}
