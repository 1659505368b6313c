//! Kubernetes projected service-account tokens as caller authentication.
//!
//! A token is accepted only when its signature verifies against a key of the configured
//! JWKS (asymmetric algorithms only), `iss` and `aud` are the configured ones, and `exp` /
//! `nbf` hold. The identity is then `spiffe://<td>/ns/<namespace>/sa/<name>` from the
//! `kubernetes.io` claim, cross-checked against `sub`.

use std::path::Path;

use airlock_identity::{SpiffeId, TrustDomain};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;

use crate::config::KubernetesAuthConfig;

/// Clock skew tolerated on `exp` / `nbf`, in seconds.
const LEEWAY_SECS: u64 = 30;

/// Why a service-account token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// The detail is for the CA's log; callers get a fixed message (see `server`).
    #[error("service-account token rejected: {0}")]
    Rejected(String),
    /// The token is valid, but its namespace is not in `kubernetes.allowed_namespaces`;
    /// the API answers 403 with this message.
    #[error("namespace {0:?} may not obtain SVIDs from this CA (kubernetes.allowed_namespaces)")]
    NamespaceNotAllowed(String),
}

/// The JWKS file (`kubernetes.jwks_file`) could not be read, does not parse, or holds no
/// keys.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct JwksLoadError {
    path: String,
    reason: String,
}

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaims,
}

#[derive(Debug, Deserialize)]
struct KubernetesClaims {
    namespace: String,
    serviceaccount: NamedObject,
}

#[derive(Debug, Deserialize)]
struct NamedObject {
    name: String,
}

/// Verifies service-account JWTs for one cluster.
#[derive(Debug)]
pub struct KubernetesAuthenticator {
    config: KubernetesAuthConfig,
    keys: JwkSet,
    trust_domain: TrustDomain,
}

impl KubernetesAuthenticator {
    /// Loads the JWKS named by `config.jwks_file` (relative to `ca_dir`).
    pub fn load(
        config: KubernetesAuthConfig,
        ca_dir: &Path,
        trust_domain: TrustDomain,
    ) -> Result<Self, JwksLoadError> {
        let path = ca_dir.join(&config.jwks_file);
        let error = |reason: String| JwksLoadError {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| error(e.to_string()))?;
        let keys: JwkSet = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        if keys.keys.is_empty() {
            return Err(error("the JWKS holds no keys".into()));
        }
        Ok(Self {
            config,
            keys,
            trust_domain,
        })
    }

    /// Returns the service account's SPIFFE ID when the token is valid.
    pub fn authenticate(&self, token: &str) -> Result<SpiffeId, JwtError> {
        let reject = |reason: String| JwtError::Rejected(reason);
        let header = decode_header(token).map_err(|e| reject(format!("malformed: {e}")))?;
        let jwk = match &header.kid {
            Some(kid) => self.keys.find(kid),
            None if self.keys.keys.len() == 1 => self.keys.keys.first(),
            None => None,
        }
        .ok_or_else(|| reject("no key in the JWKS matches its kid".into()))?;
        if !algorithm_fits_key(header.alg, &jwk.algorithm) {
            return Err(reject(format!(
                "algorithm {:?} does not fit the key",
                header.alg
            )));
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| reject(format!("unusable JWK: {e}")))?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let claims = decode::<Claims>(token, &key, &validation)
            .map_err(|e| reject(e.to_string()))?
            .claims;

        let namespace = &claims.kubernetes.namespace;
        let account = &claims.kubernetes.serviceaccount.name;
        if claims.sub != format!("system:serviceaccount:{namespace}:{account}") {
            return Err(reject("sub does not match the kubernetes.io claim".into()));
        }
        if !self.config.allowed_namespaces.is_empty()
            && !self.config.allowed_namespaces.contains(namespace)
        {
            return Err(JwtError::NamespaceNotAllowed(namespace.clone()));
        }
        SpiffeId::for_service_account(&self.trust_domain, namespace, account).map_err(|e| {
            reject(format!(
                "namespace/service account do not form a SPIFFE ID: {e}"
            ))
        })
    }
}

/// Only asymmetric algorithms, and only the ones that belong to the key's type: no
/// `none`, no HMAC with a public key as the secret.
fn algorithm_fits_key(alg: Algorithm, key: &AlgorithmParameters) -> bool {
    use Algorithm::*;
    match key {
        AlgorithmParameters::RSA(_) => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (alg, &ec.curve),
            (ES256, EllipticCurve::P256) | (ES384, EllipticCurve::P384)
        ),
        AlgorithmParameters::OctetKeyPair(_) => alg == EdDSA,
        AlgorithmParameters::OctetKey(_) => false,
    }
}
