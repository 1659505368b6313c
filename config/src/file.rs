//! Reading the file (validated, paths resolved, optionally pinned by SHA-256) and
//! writing it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use airlock_identity::TrustDomain;
use airlock_policy::load::LoadError;
use sha2::{Digest, Sha256};

use crate::access_log::SinkKind;
use crate::sidecar::{Config, HttpLimits, Service, Services};

impl Config {
    /// The file's text: what the injector, the demo and the tests write.
    pub fn to_yaml(&self) -> String {
        serde_norway::to_string(self).expect("a configuration always serializes")
    }

    /// Reads, validates and resolves relative paths; errors name the file and position.
    pub fn load(path: &Path) -> Result<Self, String> {
        Self::load_pinned(path, None)
    }

    /// [`Config::load`], checking first that the file's SHA-256 is `sha256` (hex) when one
    /// is given. The injector pins the configuration it writes into the pod this way, so
    /// that an edit after admission stops the sidecar instead of reconfiguring it.
    pub fn load_pinned(path: &Path, sha256: Option<&str>) -> Result<Self, String> {
        let text = read_text(path)?;
        if let Some(pinned) = sha256 {
            if pinned.len() != 64 || !pinned.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "--config-sha256 {pinned:?} is not a SHA-256 (64 hex digits)"
                ));
            }
            let actual = airlock_identity::hex(&Sha256::digest(text.as_bytes()));
            if !actual.eq_ignore_ascii_case(pinned.trim()) {
                return Err(format!(
                    "{}: its SHA-256 is {actual}, not the pinned {pinned} (--config-sha256): \
                     the configuration changed after it was pinned",
                    path.display()
                ));
            }
        }
        let mut config: Self = parse_yaml(&text, path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        config.resolve_paths(base);
        let in_file = |e: String| format!("{}: {e}", path.display());
        let services = config.load_registry().map_err(in_file)?;
        config.validate(&services).map_err(in_file)?;
        Ok(config)
    }

    /// The whole registry: the config file's `registry` and the services of
    /// `registry_file`, read now.
    pub fn load_registry(&self) -> Result<Services, String> {
        let text = match self.registry_file.as_deref() {
            Some(file) if file.exists() => Some(read_text(file)?),
            _ => None,
        };
        self.registry_with(text.as_deref())
    }

    /// The whole registry, with `file_text` as the contents of `registry_file` (`None`:
    /// the file is missing). Every service must belong to this trust domain.
    pub fn registry_with(&self, file_text: Option<&str>) -> Result<Services, String> {
        let mut services = self.registry.clone();
        if let (Some(file), Some(text)) = (self.registry_file.as_deref(), file_text) {
            let from_file: Services = parse_yaml(text, file)?;
            for (name, service) in from_file {
                if services.contains_key(&name) {
                    return Err(format!(
                        "{}: service {name:?} is also in the config file's registry",
                        file.display()
                    ));
                }
                services.insert(name, service);
            }
        }
        for (name, service) in &services {
            if service.endpoints.is_empty() {
                return Err(format!("registry.{name}: no endpoints"));
            }
            service.validate(name, &self.identity.trust_domain)?;
        }
        Ok(services)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut self.identity.ca_bundle);
        resolve(&mut self.identity.token_file);
        if let Some(file) = &mut self.access_log.file {
            resolve(&mut file.path);
        }
        self.policy.paths.iter_mut().for_each(resolve);
        if let Some(file) = &mut self.registry_file {
            resolve(file);
        }
        if let Some(file) = self.discovery.as_mut().and_then(|d| d.cache_file.as_mut()) {
            resolve(file);
        }
    }

    /// Checks the settings, with `services` the whole registry.
    fn validate(&self, services: &Services) -> Result<(), String> {
        if !self.admin.listen.ip().is_loopback() {
            return Err(format!(
                "admin.listen {} must be a loopback address",
                self.admin.listen
            ));
        }
        for (name, probe) in &self.admin.app_probes {
            let name_ok = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
            if !name_ok {
                return Err(format!(
                    "admin.app_probes: {name:?} may hold only letters, digits and - _ . /"
                ));
            }
            let path_ok = probe.path.as_deref().is_none_or(|path| {
                path.starts_with('/') && path.parse::<http::uri::PathAndQuery>().is_ok()
            });
            let headers_ok = probe.headers.iter().all(|h| {
                http::HeaderName::try_from(h.name.as_str()).is_ok()
                    && http::HeaderValue::try_from(h.value.as_str()).is_ok()
            });
            if !path_ok || !headers_ok || probe.timeout.is_zero() {
                return Err(format!(
                    "admin.app_probes.{name}: the path must start with /, the headers must \
                     be valid HTTP and the timeout above zero"
                ));
            }
        }
        // Outbound listeners act with this workload's identity: only the workload itself
        // (loopback) may reach them.
        for (what, addr) in self
            .outbound
            .upstreams
            .iter()
            .map(|u| ("outbound.upstreams listen", u.listen))
            .chain(
                self.outbound
                    .transparent
                    .map(|a| ("outbound.transparent", a)),
            )
        {
            if !addr.ip().is_loopback() {
                return Err(format!("{what} {addr} must be a loopback address"));
            }
        }
        let any_permissive = self.inbound.ports.iter().any(|p| p.permissive);
        match (any_permissive, self.inbound.permissive_listen) {
            (true, None) => {
                return Err(
                    "inbound.ports: a port is permissive but inbound.permissive_listen is not set"
                        .into(),
                );
            }
            (false, Some(addr)) => {
                return Err(format!(
                    "inbound.permissive_listen {addr} is set but no port is permissive"
                ));
            }
            _ => {}
        }
        let mut seen = std::collections::BTreeSet::new();
        for port in &self.inbound.ports {
            if port.port == 0 {
                return Err("inbound.ports: port 0 is not a port".into());
            }
            if !seen.insert(port.port) {
                return Err(format!("inbound.ports: port {} is listed twice", port.port));
            }
            check_http_limits(&port.http, &format!("inbound.ports[{}].http", port.port))?;
        }
        check_http_limits(&self.outbound.http.as_http_limits(), "outbound.http")?;
        if let Some(discovery) = &self.discovery {
            discovery.address()?;
            if discovery.identity.trust_domain() != self.identity.trust_domain {
                return Err(format!(
                    "discovery.identity {} is outside trust domain {}",
                    discovery.identity, self.identity.trust_domain
                ));
            }
        }
        // Every service has endpoints: `registry_with` refused the registry otherwise.
        // With a controller, an upstream may name a service it has yet to announce.
        if let Some(upstream) =
            self.outbound.upstreams.iter().find(|upstream| {
                self.discovery.is_none() && !services.contains_key(&upstream.service)
            })
        {
            return Err(format!(
                "outbound.upstreams: service {:?} (listen {}) is not in the registry",
                upstream.service, upstream.listen
            ));
        }
        if self.access_log.sink == SinkKind::File && self.access_log.file.is_none() {
            return Err("access_log.sink is file but access_log.file is not set".into());
        }
        let limits = &self.limits;
        if limits.max_connections == 0
            || limits.pool_connections_per_endpoint == 0
            || limits.pool_streams_per_connection == 0
            || limits.max_streams_per_connection == 0
            || limits.worker_threads == Some(0)
        {
            return Err("limits: connection and stream limits must be at least 1".into());
        }
        Ok(())
    }
}

impl Service {
    /// Checks entry `name` as a registry file's would be checked (its ports' settings,
    /// its identity's trust domain), wherever it came from; errors name
    /// `registry.NAME.field`. An empty endpoint list passes: only a file must list one.
    pub fn validate(&self, name: &str, trust_domain: &TrustDomain) -> Result<(), String> {
        let mut seen = std::collections::BTreeSet::new();
        for (index, port) in self.ports.iter().enumerate() {
            port.validate(&format!("registry.{name}.ports[{index}]"))?;
            if !seen.insert(port.port) {
                return Err(format!(
                    "registry.{name}.ports[{index}]: port {} is listed twice",
                    port.port
                ));
            }
        }
        if self.identity.trust_domain() != *trust_domain {
            return Err(format!(
                "registry.{name}.identity {} is outside trust domain {trust_domain}",
                self.identity
            ));
        }
        Ok(())
    }
}

/// How a captured connection's original destination named a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialed {
    /// The address of one of its endpoints: that pod, as a direct connection would reach.
    Endpoint,
    /// One of its virtual addresses (a ClusterIP): any endpoint, as the balancer picks.
    Address,
}

/// The bounds hyper and the semaphores need; `at` names the section in the message.
fn check_http_limits(limits: &HttpLimits, at: &str) -> Result<(), String> {
    // hyper cannot read a request head in less than 8 KiB of buffer.
    if limits.max_header_bytes < 8192 {
        return Err(format!("{at}.max_header_bytes must be at least 8192"));
    }
    for (field, value) in [
        ("max_headers", limits.max_headers),
        ("max_uri_bytes", limits.max_uri_bytes),
        ("max_concurrent_requests", limits.max_concurrent_requests),
    ] {
        if value == 0 {
            return Err(format!("{at}.{field} must be at least 1"));
        }
    }
    if limits.header_read_timeout.is_zero() {
        return Err(format!("{at}.header_read_timeout must be longer than 0s"));
    }
    Ok(())
}

/// The service that `addr` (a captured connection's original destination) names, by the
/// IP of one of its endpoints or one of its virtual addresses.
pub fn service_at(services: &Services, addr: SocketAddr) -> Option<(&str, &Service, Dialed)> {
    let ip = addr.ip();
    services.iter().find_map(|(name, s)| {
        let dialed = if s.endpoints.iter().any(|e| e.ip() == ip) {
            Dialed::Endpoint
        } else if s.addresses.contains(&ip) {
            Dialed::Address
        } else {
            return None;
        };
        Some((name.as_str(), s, dialed))
    })
}

fn read_text(path: &Path) -> Result<String, String> {
    std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))
}

/// The YAML `text` of the file at `path` read into `T`; errors read
/// `file:line:column: message`.
fn parse_yaml<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T, String> {
    serde_norway::from_str(text).map_err(|e| LoadError::from_yaml(path, &e).to_string())
}
