//! `ca.yaml`: the CA's settings, written by `airlock ca init` with every default spelled
//! out, read by `serve`/`issue`/`token`. Unknown fields are errors.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use airlock_identity::TrustDomain;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The largest `max_ttl` accepted: the issuing certificate's lifetime.
const MAX_MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Settings of one CA directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaConfig {
    /// Trust domain of every SVID this CA issues; written by `ca init`, required.
    #[serde(with = "trust_domain_text")]
    pub trust_domain: TrustDomain,
    /// Where `ca serve` listens unless `--listen` says otherwise.
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Lifetime of an SVID when the request names none.
    #[serde(default = "defaults::default_ttl", with = "duration_text")]
    pub default_ttl: Duration,
    /// Longest lifetime the CA grants; longer requests are refused.
    #[serde(default = "defaults::max_ttl", with = "duration_text")]
    pub max_ttl: Duration,
    /// Extra DNS names for the API's own certificate (the host name is always added).
    #[serde(default = "defaults::server_names")]
    pub server_names: Vec<String>,
    /// Per-caller token bucket on `POST /v1/svid` (default: 20 per second, burst 40).
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Limits and timeouts of the API listener; each key has its own default.
    #[serde(default)]
    pub limits: ServerLimits,
    /// Kubernetes projected service-account tokens; absent = that method is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesAuthConfig>,
    /// The deny list (`airlock ca revoke`), relative to the CA directory. Several replicas
    /// share one by pointing here at the same mounted file (a ConfigMap).
    #[serde(default = "defaults::revocation_file")]
    pub revocation_file: String,
}

/// Per-caller (source IP) token bucket for `POST /v1/svid`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Tokens each caller's bucket regains per second (default 20); must be positive.
    pub per_second: f64,
    /// Bucket size: requests a caller that has been idle may make at once (default 40);
    /// must be at least 1.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            per_second: 20.0,
            burst: 40,
        }
    }
}

/// Limits and timeouts of the API listener.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerLimits {
    /// Largest `POST /v1/svid` body, in bytes (default 65536); a larger one gets 413.
    pub max_body_bytes: usize,
    /// Time a client has to finish the TLS handshake (default 5s).
    #[serde(with = "duration_text")]
    pub handshake_timeout: Duration,
    /// Time a client has to send the request head (default 5s): the slowloris guard.
    #[serde(with = "duration_text")]
    pub header_read_timeout: Duration,
    /// Whole request, body included.
    #[serde(with = "duration_text")]
    pub request_timeout: Duration,
    /// Connections open at once, all callers together (default 1024); further ones are
    /// closed at accept.
    pub max_connections: usize,
    /// Per caller address (IPv6: per /64).
    pub max_connections_per_ip: usize,
    /// A connection is closed (gracefully) after this long, whatever it does.
    #[serde(with = "duration_text")]
    pub max_connection_age: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 64 * 1024,
            handshake_timeout: Duration::from_secs(5),
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            max_connections: 1024,
            max_connections_per_ip: 64,
            max_connection_age: Duration::from_secs(300),
        }
    }
}

/// How to verify Kubernetes projected service-account JWTs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesAuthConfig {
    /// Expected `iss`.
    pub issuer: String,
    /// Expected `aud` (the projected volume's audience).
    pub audience: String,
    /// JWKS file with the cluster's service-account signing keys (relative to the CA dir).
    pub jwks_file: String,
    /// Namespaces allowed to obtain SVIDs; empty = all.
    #[serde(default)]
    pub allowed_namespaces: Vec<String>,
}

mod defaults {
    use super::*;
    pub(super) fn listen() -> SocketAddr {
        "127.0.0.1:15012".parse().expect("valid literal")
    }
    pub(super) fn default_ttl() -> Duration {
        Duration::from_secs(3600)
    }
    /// As long as the default: a caller cannot ask for a longer-lived SVID than the docs
    /// promise unless the operator raises it.
    pub(super) fn max_ttl() -> Duration {
        Duration::from_secs(3600)
    }
    pub(super) fn server_names() -> Vec<String> {
        vec!["localhost".into()]
    }
    pub(super) fn revocation_file() -> String {
        "revocations.json".into()
    }
}

impl CaConfig {
    /// The defaults for a new CA of `trust_domain`.
    pub fn new(trust_domain: TrustDomain) -> Self {
        Self {
            trust_domain,
            listen: defaults::listen(),
            default_ttl: defaults::default_ttl(),
            max_ttl: defaults::max_ttl(),
            server_names: defaults::server_names(),
            rate_limit: RateLimitConfig::default(),
            limits: ServerLimits::default(),
            kubernetes: None,
            revocation_file: defaults::revocation_file(),
        }
    }

    /// Parses `ca.yaml`; the error names the file, line and column.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, String> {
        let config: Self =
            serde_norway::from_str(text).map_err(|e| format!("{}: {e}", origin.display()))?;
        if config.default_ttl > config.max_ttl {
            return Err(format!(
                "{}: default_ttl ({}) exceeds max_ttl ({})",
                origin.display(),
                humantime::format_duration(config.default_ttl),
                humantime::format_duration(config.max_ttl)
            ));
        }
        // No SVID can outlive the issuing certificate (a year) anyway; a longer max_ttl
        // would only make time arithmetic overflow.
        if config.max_ttl > MAX_MAX_TTL {
            return Err(format!(
                "{}: max_ttl ({}) exceeds the issuing certificate's lifetime of 365 days",
                origin.display(),
                humantime::format_duration(config.max_ttl)
            ));
        }
        if config.default_ttl.is_zero() {
            return Err(format!(
                "{}: default_ttl must be positive",
                origin.display()
            ));
        }
        let rate = config.rate_limit.per_second;
        if !rate.is_finite() || rate <= 0.0 || config.rate_limit.burst == 0 {
            return Err(format!(
                "{}: rate_limit.per_second and rate_limit.burst must be positive",
                origin.display()
            ));
        }
        Ok(config)
    }

    /// The file text `ca init` writes: the settings plus a commented example of the
    /// optional Kubernetes section.
    pub fn to_yaml(&self) -> String {
        let settings = serde_norway::to_string(self).expect("config serializes");
        format!(
            "# airlock CA settings (docs/ca.md). Durations read like 90s, 30m, 1h, 1day.\n\
             {settings}\
             # Kubernetes service-account tokens as caller authentication:\n\
             # kubernetes:\n\
             #   issuer: https://kubernetes.default.svc.cluster.local\n\
             #   audience: airlock-ca\n\
             #   jwks_file: cluster-jwks.json   # relative to this directory\n\
             #   allowed_namespaces: []         # empty = every namespace\n"
        )
    }
}

mod duration_text {
    use super::*;
    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {text:?}: {e}")))
    }
}

mod trust_domain_text {
    use super::*;
    pub(super) fn serialize<S: Serializer>(td: &TrustDomain, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(td.as_str())
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TrustDomain, D::Error> {
        let text = String::deserialize(d)?;
        TrustDomain::parse(&text)
            .map_err(|e| serde::de::Error::custom(format!("invalid trust domain {text:?}: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let config = CaConfig::new(TrustDomain::parse("td").unwrap());
        let yaml = config.to_yaml();
        assert_eq!(
            CaConfig::parse(&yaml, Path::new("ca.yaml")).unwrap(),
            config
        );

        let err =
            CaConfig::parse("trust_domain: td\nmax_tll: 1h\n", Path::new("ca.yaml")).unwrap_err();
        assert!(
            err.contains("ca.yaml") && err.contains("max_tll") && err.contains("line 2"),
            "{err}"
        );
        let err =
            CaConfig::parse("trust_domain: td\nmax_ttl: forever\n", Path::new("c")).unwrap_err();
        assert!(err.contains("invalid duration"), "{err}");
        let err = CaConfig::parse(
            "trust_domain: td\ndefault_ttl: 2d\nmax_ttl: 1d\n",
            Path::new("c"),
        )
        .unwrap_err();
        assert!(err.contains("exceeds max_ttl"), "{err}");
        let err =
            CaConfig::parse("trust_domain: td\nmax_ttl: 400days\n", Path::new("c")).unwrap_err();
        assert!(err.contains("max_ttl") && err.contains("365 days"), "{err}");
        let err = CaConfig::parse("trust_domain: TD\n", Path::new("c")).unwrap_err();
        assert!(err.contains("lowercase"), "{err}");
    }
}
