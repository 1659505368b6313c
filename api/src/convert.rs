//! Between the wire's `Service` and the sidecar's registry entry. The controller turns
//! registry entries (a directory source) into wire services; the sidecar turns wire
//! services back into registry entries, and refuses what it could not have read from a
//! registry file.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use airlock_config::Service;
use airlock_config::routes::{
    FailureAccrual, PathMatch, PathMatchKind, RetryBudget, RetryConstraint, RetryRate, RouteMatch,
    RouteRetry, RouteRule, RouteTimeouts, ServicePort, ServiceProtocol,
};
use airlock_identity::SpiffeId;

use crate::proto;

/// Why a wire service cannot be a registry entry; names the service and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("service {service:?}: {field}: {reason}")]
pub struct ConvertError {
    /// The service's name.
    pub service: String,
    /// The field at fault, as `ports[0].retry.attempts`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

/// The wire form of registry entry `name`: every endpoint ready.
pub fn service_to_wire(name: &str, service: &Service) -> proto::Service {
    proto::Service {
        name: name.to_owned(),
        identity: service.identity.to_string(),
        addresses: service.addresses.iter().map(ToString::to_string).collect(),
        ports: service.ports.iter().map(port_to_wire).collect(),
        endpoints: service
            .endpoints
            .iter()
            .map(|addr| proto::Endpoint {
                address: addr.to_string(),
                ready: true,
                serving: true,
                terminating: false,
                zone: String::new(),
            })
            .collect(),
    }
}

/// The registry entry of a wire service. New traffic goes to the ready endpoints; when
/// none is ready, to those still serving while they terminate (as kube-proxy does), so
/// that a rollout's last pods keep answering until their successors are ready.
pub fn service_from_wire(wire: &proto::Service) -> Result<Service, ConvertError> {
    let fail = |field: &str, reason: String| ConvertError {
        service: wire.name.clone(),
        field: field.to_owned(),
        reason,
    };
    let identity = SpiffeId::parse(&wire.identity).map_err(|e| fail("identity", e.to_string()))?;
    let addresses = wire
        .addresses
        .iter()
        .enumerate()
        .map(|(i, a)| {
            a.parse::<IpAddr>()
                .map_err(|e| fail(&format!("addresses[{i}]"), format!("{a:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut ready = Vec::new();
    let mut serving = Vec::new();
    for (i, endpoint) in wire.endpoints.iter().enumerate() {
        let addr: SocketAddr = endpoint.address.parse().map_err(|e| {
            fail(
                &format!("endpoints[{i}].address"),
                format!("{:?}: {e}", endpoint.address),
            )
        })?;
        if endpoint.ready {
            ready.push(addr);
        } else if endpoint.serving {
            serving.push(addr);
        }
    }
    let endpoints = if ready.is_empty() { serving } else { ready };
    let ports = wire
        .ports
        .iter()
        .enumerate()
        .map(|(i, port)| {
            port_from_wire(port)
                .map_err(|(field, reason)| fail(&format!("ports[{i}].{field}"), reason))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut service = Service::new(identity, endpoints);
    service.addresses = addresses;
    service.ports = ports;
    Ok(service)
}

fn port_to_wire(port: &ServicePort) -> proto::ServicePort {
    let constraint = &port.retry_constraint;
    proto::ServicePort {
        port: u32::from(port.port),
        protocol: match port.protocol {
            ServiceProtocol::Tcp => proto::Protocol::Tcp,
            ServiceProtocol::Http => proto::Protocol::Http,
        } as i32,
        timeouts: timeouts_to_wire(&port.timeouts),
        retry: port.retry.as_ref().map(retry_to_wire),
        rules: port
            .rules
            .iter()
            .map(|rule| proto::RouteRule {
                matches: rule
                    .matches
                    .iter()
                    .map(|m| proto::PathMatch {
                        kind: match m.path.kind {
                            PathMatchKind::PathPrefix => proto::path_match::Kind::PathPrefix,
                            PathMatchKind::Exact => proto::path_match::Kind::Exact,
                        } as i32,
                        value: m.path.value.clone(),
                    })
                    .collect(),
                timeouts: timeouts_to_wire(&rule.timeouts),
                retry: rule.retry.as_ref().map(retry_to_wire),
            })
            .collect(),
        retry_constraint: Some(proto::RetryConstraint {
            budget_percent: constraint.budget.percent,
            budget_interval: Some(duration_to_wire(constraint.budget.interval)),
            min_retry_count: constraint.min_retry_rate.count,
            min_retry_interval: Some(duration_to_wire(constraint.min_retry_rate.interval)),
        }),
        failure_accrual: Some(proto::FailureAccrual {
            consecutive_failures: port.failure_accrual.consecutive_failures,
            min_penalty: Some(duration_to_wire(port.failure_accrual.min_penalty)),
            max_penalty: Some(duration_to_wire(port.failure_accrual.max_penalty)),
        }),
    }
}

/// A field error: the field's path within the port, and the reason.
type FieldError = (String, String);

fn port_from_wire(wire: &proto::ServicePort) -> Result<ServicePort, FieldError> {
    let number = u16::try_from(wire.port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| ("port".to_owned(), format!("{} is not a port", wire.port)))?;
    let protocol = match proto::Protocol::try_from(wire.protocol) {
        Ok(proto::Protocol::Tcp) => ServiceProtocol::Tcp,
        Ok(proto::Protocol::Http) => ServiceProtocol::Http,
        Err(_) => {
            return Err((
                "protocol".into(),
                format!("unknown protocol {}", wire.protocol),
            ));
        }
    };
    let mut port = ServicePort::new(number, protocol);
    port.timeouts = timeouts_from_wire(wire.timeouts.as_ref(), "timeouts")?;
    port.retry = wire
        .retry
        .as_ref()
        .map(|r| retry_from_wire(r, "retry"))
        .transpose()?;
    for (i, rule) in wire.rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        let matches = rule
            .matches
            .iter()
            .enumerate()
            .map(|(m, matched)| {
                let kind = match proto::path_match::Kind::try_from(matched.kind) {
                    Ok(proto::path_match::Kind::PathPrefix) => PathMatchKind::PathPrefix,
                    Ok(proto::path_match::Kind::Exact) => PathMatchKind::Exact,
                    Err(_) => {
                        return Err((
                            format!("{at}.matches[{m}].kind"),
                            format!("unknown kind {}", matched.kind),
                        ));
                    }
                };
                Ok(RouteMatch {
                    path: PathMatch {
                        kind,
                        value: matched.value.clone(),
                    },
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        port.rules.push(RouteRule {
            matches,
            timeouts: timeouts_from_wire(rule.timeouts.as_ref(), &format!("{at}.timeouts"))?,
            retry: rule
                .retry
                .as_ref()
                .map(|r| retry_from_wire(r, &format!("{at}.retry")))
                .transpose()?,
        });
    }
    if let Some(constraint) = &wire.retry_constraint {
        port.retry_constraint = RetryConstraint {
            budget: RetryBudget {
                percent: constraint.budget_percent,
                interval: duration_from_wire(
                    constraint.budget_interval.as_ref(),
                    "retry_constraint.budget_interval",
                )?,
            },
            min_retry_rate: RetryRate {
                count: constraint.min_retry_count,
                interval: duration_from_wire(
                    constraint.min_retry_interval.as_ref(),
                    "retry_constraint.min_retry_interval",
                )?,
            },
        };
    }
    if let Some(accrual) = &wire.failure_accrual {
        port.failure_accrual = FailureAccrual {
            consecutive_failures: accrual.consecutive_failures,
            min_penalty: duration_from_wire(
                accrual.min_penalty.as_ref(),
                "failure_accrual.min_penalty",
            )?,
            max_penalty: duration_from_wire(
                accrual.max_penalty.as_ref(),
                "failure_accrual.max_penalty",
            )?,
        };
    }
    Ok(port)
}

fn timeouts_to_wire(timeouts: &RouteTimeouts) -> Option<proto::Timeouts> {
    (timeouts.request.is_some() || timeouts.backend_request.is_some()).then(|| proto::Timeouts {
        request: timeouts.request.map(duration_to_wire),
        backend_request: timeouts.backend_request.map(duration_to_wire),
    })
}

fn timeouts_from_wire(
    wire: Option<&proto::Timeouts>,
    at: &str,
) -> Result<RouteTimeouts, FieldError> {
    let Some(wire) = wire else {
        return Ok(RouteTimeouts::default());
    };
    let optional = |d: Option<&prost_types::Duration>, field: &str| {
        d.map(|d| duration_from_wire(Some(d), &format!("{at}.{field}")))
            .transpose()
    };
    Ok(RouteTimeouts {
        request: optional(wire.request.as_ref(), "request")?,
        backend_request: optional(wire.backend_request.as_ref(), "backend_request")?,
    })
}

fn retry_to_wire(retry: &RouteRetry) -> proto::Retry {
    proto::Retry {
        codes: retry.codes.iter().map(|c| u32::from(*c)).collect(),
        attempts: retry.attempts,
        backoff: Some(duration_to_wire(retry.backoff)),
    }
}

fn retry_from_wire(wire: &proto::Retry, at: &str) -> Result<RouteRetry, FieldError> {
    let codes = wire
        .codes
        .iter()
        .map(|c| {
            u16::try_from(*c).map_err(|_| (format!("{at}.codes"), format!("{c} is not a status")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RouteRetry {
        codes,
        attempts: wire.attempts,
        backoff: duration_from_wire(wire.backoff.as_ref(), &format!("{at}.backoff"))?,
    })
}

fn duration_to_wire(duration: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(duration.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(duration.subsec_nanos()).expect("below one second"),
    }
}

/// A required duration: present, not negative, nanos within a second.
fn duration_from_wire(
    wire: Option<&prost_types::Duration>,
    at: &str,
) -> Result<Duration, FieldError> {
    let wire = wire.ok_or_else(|| (at.to_owned(), "missing".to_owned()))?;
    match (u64::try_from(wire.seconds), u32::try_from(wire.nanos)) {
        (Ok(seconds), Ok(nanos)) if nanos < 1_000_000_000 => Ok(Duration::new(seconds, nanos)),
        _ => Err((
            at.to_owned(),
            format!("{}s {}ns is not a duration", wire.seconds, wire.nanos),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registry_entry(yaml: &str) -> Service {
        serde_norway::from_str(yaml).unwrap()
    }

    #[test]
    fn a_registry_entry_survives_the_wire_unchanged() {
        let entries = [
            "identity: spiffe://td/ns/pay/sa/api\nendpoints: [10.0.0.7:15008]\n",
            "identity: spiffe://td/ns/pay/sa/api\nendpoints: [10.0.0.7:15008, '[fd00::7]:15008']\n\
             addresses: [10.96.0.10]\nports:\n- port: 5432\n- port: 8080\n  protocol: http\n  \
             timeouts: {request: 2s, backend_request: 500ms}\n  retry: {codes: [502, 503], attempts: 3, backoff: 10ms}\n  \
             rules:\n  - matches: [{path: {type: Exact, value: /slow}}, {path: {value: /reports}}]\n    \
             timeouts: {request: 30s}\n    retry: {codes: [503]}\n  \
             retry_constraint: {budget: {percent: 50, interval: 5s}, min_retry_rate: {count: 3, interval: 2s}}\n  \
             failure_accrual: {consecutive_failures: 2, min_penalty: 1s, max_penalty: 4s}\n",
        ];
        for yaml in entries {
            let entry = registry_entry(yaml);
            let back = service_from_wire(&service_to_wire("api.pay", &entry)).unwrap();
            assert_eq!(back, entry, "{yaml}");
        }
    }

    #[test]
    fn readiness_decides_which_endpoints_take_traffic() {
        let endpoint = |address: &str, ready, serving, terminating| proto::Endpoint {
            address: address.into(),
            ready,
            serving,
            terminating,
            zone: String::new(),
        };
        let service = |endpoints| proto::Service {
            name: "api.pay".into(),
            identity: "spiffe://td/ns/pay/sa/api".into(),
            endpoints,
            ..proto::Service::default()
        };
        let addrs = |s: &proto::Service| service_from_wire(s).unwrap().endpoints;
        let rollout = service(vec![
            endpoint("10.0.0.1:15008", true, true, false),
            endpoint("10.0.0.2:15008", false, true, true),
            endpoint("10.0.0.3:15008", false, false, false),
        ]);
        assert_eq!(addrs(&rollout), ["10.0.0.1:15008".parse().unwrap()]);
        let last_pods_leaving = service(vec![
            endpoint("10.0.0.2:15008", false, true, true),
            endpoint("10.0.0.3:15008", false, false, false),
        ]);
        assert_eq!(
            addrs(&last_pods_leaving),
            ["10.0.0.2:15008".parse().unwrap()]
        );
        assert!(addrs(&service(vec![])).is_empty());
    }

    #[test]
    fn what_a_registry_file_could_not_say_is_refused_by_field() {
        let good = service_to_wire(
            "api.pay",
            &registry_entry(
                "identity: spiffe://td/ns/pay/sa/api\nendpoints: [10.0.0.7:15008]\nports: [{port: 80, protocol: http, retry: {}}]\n",
            ),
        );
        let mut cases: Vec<(proto::Service, &str)> = Vec::new();
        let mut bad = good.clone();
        bad.identity = "spiffe://td".into();
        cases.push((bad, "identity"));
        let mut bad = good.clone();
        bad.endpoints[0].address = "10.0.0.7".into();
        cases.push((bad, "endpoints[0].address"));
        let mut bad = good.clone();
        bad.addresses.push("cluster-ip".into());
        cases.push((bad, "addresses[0]"));
        let mut bad = good.clone();
        bad.ports[0].port = 70_000;
        cases.push((bad, "ports[0].port"));
        let mut bad = good.clone();
        bad.ports[0].protocol = 9;
        cases.push((bad, "ports[0].protocol"));
        let mut bad = good.clone();
        bad.ports[0].retry.as_mut().unwrap().backoff = Some(prost_types::Duration {
            seconds: -1,
            nanos: 0,
        });
        cases.push((bad, "ports[0].retry.backoff"));
        let mut bad = good.clone();
        bad.ports[0].failure_accrual.as_mut().unwrap().min_penalty = None;
        cases.push((bad, "ports[0].failure_accrual.min_penalty"));
        assert!(service_from_wire(&good).is_ok(), "the control case");
        for (wire, field) in cases {
            let error = service_from_wire(&wire).unwrap_err();
            assert_eq!(error.field, field, "{error}");
            assert_eq!(error.service, "api.pay");
        }
    }
}
