//! `airlock inject -f FILE` (manifests in, manifests out) and `airlock injector` (the
//! mutating admission webhook). Both apply the one mutation of `airlock_inject`.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use airlock_identity::TrustDomain;
use airlock_inject::webhook::CertFiles;
use airlock_inject::{Controller, InjectOptions, Outcome, inject_manifest};
use airlock_policy::DefaultMode;
use clap::Args;

use crate::Failure;

/// Cluster-wide injection settings; pods refine some with `airlock.dev/*` annotations.
#[derive(Debug, Args)]
pub(crate) struct InjectFlags {
    /// Image of both injected containers (it must hold the `airlock` binary).
    #[arg(long, default_value = concat!("airlock:", env!("CARGO_PKG_VERSION")))]
    image: String,
    /// Trust domain of the mesh (the CA's).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The CA's URL as sidecars dial it.
    #[arg(long, default_value = "https://airlock-ca.airlock-system.svc:15012")]
    ca_url: String,
    /// Audience of the projected service-account token (the CA's `kubernetes.audience`).
    #[arg(long, default_value = "airlock-ca")]
    ca_audience: String,
    /// UID of the sidecar; capture exempts it, and app containers may not use it.
    #[arg(long, default_value_t = airlock_config::ports::PROXY_UID)]
    proxy_uid: u32,
    /// Also accept plaintext on app ports unless a pod says `airlock.dev/mode: strict`
    /// (for migrations; see docs/kubernetes.md).
    #[arg(long)]
    permissive: bool,
    /// What a sidecar does when no policy decides, unless the pod says otherwise.
    #[arg(long, default_value = "deny")]
    default_policy: DefaultMode,
    /// The controller (`airlock control`) sidecars subscribe to, as
    /// `https://host:port`; with it, `--controller-identity`.
    #[arg(long, requires = "controller_identity")]
    controller_url: Option<String>,
    /// The controller's SPIFFE ID, pinned by every sidecar.
    #[arg(long, requires = "controller_url")]
    controller_identity: Option<airlock_identity::SpiffeId>,
}

impl InjectFlags {
    fn options(self, namespace: String) -> Result<InjectOptions, Failure> {
        if !self.ca_url.starts_with("https://") {
            return Err(Failure::usage(format!(
                "--ca-url {:?} must start with https://",
                self.ca_url
            )));
        }
        if self.proxy_uid == 0 {
            return Err(Failure::usage("--proxy-uid must not be 0 (root)"));
        }
        let controller = match (self.controller_url, self.controller_identity) {
            (Some(url), Some(identity)) => {
                let check = airlock_config::DiscoveryConfig {
                    url: url.clone(),
                    identity: identity.clone(),
                    cache_file: None,
                };
                check
                    .address()
                    .map_err(|e| Failure::usage(e.replace("discovery.url", "--controller-url")))?;
                if identity.trust_domain() != self.trust_domain {
                    return Err(Failure::usage(format!(
                        "--controller-identity {identity} is outside --trust-domain {}",
                        self.trust_domain
                    )));
                }
                Some(Controller { url, identity })
            }
            _ => None,
        };
        Ok(InjectOptions {
            controller,
            image: self.image,
            trust_domain: self.trust_domain,
            ca_url: self.ca_url,
            ca_audience: self.ca_audience,
            proxy_uid: self.proxy_uid,
            namespace,
            permissive: self.permissive,
            default_policy: self.default_policy,
        })
    }
}

#[derive(Debug, Args)]
pub(crate) struct InjectArgs {
    /// Kubernetes YAML (one or more documents); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Namespace of objects whose metadata names none (as `kubectl apply -n`).
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    flags: InjectFlags,
}

/// The text of FILE, or of standard input for `-`.
fn read_input(file: &Path) -> Result<String, Failure> {
    if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::failed(format!("reading standard input: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(file).map_err(|e| Failure::failed(format!("{}: {e}", file.display())))
}

/// Writes the injected manifests to stdout and one line per pod template to stderr.
pub(crate) fn inject(args: InjectArgs) -> Result<(), Failure> {
    let options = args.flags.options(args.namespace)?;
    let name = args.file.display().to_string();
    let text = read_input(&args.file)?;
    let injected =
        inject_manifest(&text, &options).map_err(|e| Failure::failed(format!("{name}: {e}")))?;
    print!("{}", injected.text);
    for report in injected.reports {
        match report.outcome {
            Outcome::Injected(identity) => eprintln!("injected {} as {identity}", report.object),
            Outcome::Skipped(reason) => eprintln!("skipped {}: {reason}", report.object),
        }
    }
    Ok(())
}

#[derive(Debug, Args)]
pub(crate) struct InjectorArgs {
    /// Address of the HTTPS listener (the webhook Service's target port).
    #[arg(long, default_value = "0.0.0.0:9443")]
    listen: SocketAddr,
    /// Serving certificate chain (PEM), for the webhook Service's DNS name; re-read when
    /// it changes.
    #[arg(long)]
    cert: PathBuf,
    /// The certificate's private key (PEM).
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    flags: InjectFlags,
}

/// Serves AdmissionReviews until SIGINT/SIGTERM.
pub(crate) fn injector(args: InjectorArgs) -> Result<(), Failure> {
    // Objects without a namespace come with one in the review; this is never used.
    let options = args.flags.options("default".into())?;
    crate::logging::init_json();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Failure::failed)?;
    let _context = runtime.enter();
    let shutdown = crate::logging::shutdown_signal();
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .map_err(|e| Failure::failed(format!("--listen {}: {e}", args.listen)))?;
        let local = listener.local_addr().map_err(Failure::failed)?;
        let files = CertFiles {
            cert: args.cert,
            key: args.key,
        };
        // Tests and scripts read this line to know the webhook is serving.
        let announce = || println!("airlock injector listening on {local}");
        airlock_inject::webhook::serve(listener, files, options, announce, shutdown)
            .await
            .map_err(Failure::failed)
    })
}

#[derive(Debug, Args)]
pub(crate) struct RegistryArgs {
    /// `kubectl get services,pods -A -o json` (or `-o yaml`); `-` reads standard input.
    #[arg(short = 'f', long = "filename")]
    file: PathBuf,
    /// Trust domain of the mesh (the CA's).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: TrustDomain,
    /// The sidecars' mesh port, which every Service of the mesh also exposes.
    #[arg(long, default_value_t = airlock_config::ports::MESH)]
    mesh_port: u16,
}

/// Writes the registry to stdout and one line per Service left out to stderr.
pub(crate) fn registry(args: RegistryArgs) -> Result<(), Failure> {
    let text = read_input(&args.file)?;
    let name = args.file.display();
    let objects = match serde_json::from_str(&text) {
        Ok(objects) => objects,
        Err(json) => airlock_inject::yaml::parse(&text)
            .map_err(|yaml| {
                Failure::failed(format!("{name}: neither JSON ({json}) nor YAML ({yaml})"))
            })?
            .unwrap_or_default(),
    };
    let built = airlock_inject::registry(&objects, &args.trust_domain, args.mesh_port)
        .map_err(|e| Failure::failed(format!("{name}: {e}")))?;
    print!("{}", built.yaml);
    for line in built.skipped {
        eprintln!("skipped {line}");
    }
    Ok(())
}
