//! The demo's scripted calls: what each caller asks, what policy should answer, and the
//! table that shows what the callee's sidecar decided and why.

use std::path::Path;
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;

use super::sidecars::{APP_PORT, Mesh, TRUST_DOMAIN};

/// The window of the payments grant for `finance/reconcile` as
/// examples/policies/payments.yaml writes it.
const EXAMPLE_GRANT: [(&str, &str); 2] = [
    ("notBefore", "2026-12-01T00:00:00Z"),
    ("expiresAt", "2027-01-15T00:00:00Z"),
];

/// The grant's window in the demo: from a day before the demo started to 30 days after,
/// so that its showcase of a live time-bound grant holds on whatever date it runs.
pub(super) struct GrantWindow {
    opens: OffsetDateTime,
    closes: OffsetDateTime,
}

impl GrantWindow {
    /// The window around `start` (whole seconds, as policies write times).
    pub(super) fn around(start: OffsetDateTime) -> Self {
        let start = start
            .replace_nanosecond(0)
            .expect("zero is a valid nanosecond");
        Self {
            opens: start - time::Duration::days(1),
            closes: start + time::Duration::days(30),
        }
    }

    /// `policy` with the example grant's times replaced by this window's; other files
    /// come back unchanged.
    pub(super) fn apply(&self, policy: &str) -> String {
        let mut text = policy.to_owned();
        for ((key, example), time) in EXAMPLE_GRANT.iter().zip([self.opens, self.closes]) {
            let written = format!("{key}: \"{example}\"");
            let moved = format!("{key}: \"{}\"", rfc3339(time));
            text = text.replace(&written, &moved);
        }
        text
    }

    fn contains(&self, now: OffsetDateTime) -> bool {
        self.opens <= now && now < self.closes
    }

    fn describe(&self) -> String {
        let date = |t: OffsetDateTime| rfc3339(t)[..10].to_owned();
        format!(
            "time-bound grant, {} to {}",
            date(self.opens),
            date(self.closes)
        )
    }
}

fn rfc3339(time: OffsetDateTime) -> String {
    time.format(&Rfc3339).expect("a UTC time formats")
}

pub(super) struct Call {
    from: &'static str,
    to: &'static str,
    method: &'static str,
    path: &'static str,
    allowed: bool,
    /// What the call shows.
    why: String,
}

pub(super) fn calls(now: OffsetDateTime, grant: &GrantWindow) -> Vec<Call> {
    let call = |from, to, method, path, allowed, why: &str| Call {
        from,
        to,
        method,
        path,
        allowed,
        why: why.to_owned(),
    };
    vec![
        call("frontend", "checkout", "GET", "/cart", true, "L7 ALLOW"),
        call(
            "frontend",
            "checkout",
            "POST",
            "/checkout",
            true,
            "L7 ALLOW",
        ),
        call(
            "checkout",
            "payments",
            "POST",
            "/v1/charges",
            true,
            "L7 ALLOW",
        ),
        call(
            "checkout",
            "payments",
            "DELETE",
            "/v1/charges",
            false,
            "method not granted",
        ),
        call(
            "checkout",
            "payments",
            "POST",
            "/v1/charges/../../debug/pprof",
            false,
            "mesh-wide DENY, path normalized",
        ),
        call(
            "frontend",
            "payments",
            "GET",
            "/v1/status",
            true,
            "namespace ALLOW + dry-run DENY",
        ),
        call(
            "frontend",
            "payments",
            "POST",
            "/v1/charges",
            false,
            "only checkout may charge",
        ),
        call(
            "reconcile",
            "payments",
            "GET",
            "/v1/charges",
            grant.contains(now),
            &grant.describe(),
        ),
        call(
            "intruder",
            "payments",
            "GET",
            "/v1/status",
            false,
            "quarantined namespace",
        ),
        call(
            "intruder",
            "checkout",
            "GET",
            "/cart",
            false,
            "quarantined namespace",
        ),
    ]
}

/// The call the live revocation is shown on: the reconcile job's, allowed by its grant.
pub(super) fn revocation_probe() -> Call {
    Call {
        from: "reconcile",
        to: "payments",
        method: "GET",
        path: "/v1/charges",
        allowed: true,
        why: "the time-bound grant".into(),
    }
}

/// What happened to one call.
pub(super) struct Outcome {
    pub(super) status: u16,
    pub(super) reason: String,
    millis: f64,
}

pub(super) async fn send(
    client: &Client<HttpConnector, Empty<Bytes>>,
    mesh: &Mesh,
    call: &Call,
    index: usize,
) -> Outcome {
    let request_id = format!("demo-{index}");
    let request = hyper::Request::builder()
        .method(call.method)
        .uri(format!(
            "http://{}{}",
            mesh.upstream(call.from, call.to),
            call.path
        ))
        .header(hyper::header::HOST, format!("{}:{APP_PORT}", call.to))
        .header("x-request-id", &request_id)
        .body(Empty::new())
        .expect("valid request");
    let started = Instant::now();
    let (status, deny_reason) = match client.request(request).await {
        Ok(response) => {
            let status = response.status().as_u16();
            let reason = response
                .headers()
                .get("airlock-deny-reason")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let _ = response.into_body().collect().await;
            (status, reason)
        }
        Err(e) => (0, Some(format!("no answer: {e}"))),
    };
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let logged = logged_reason(mesh.access_log(call.to), &request_id).await;
    Outcome {
        status,
        reason: logged.or(deny_reason).unwrap_or_default(),
        millis,
    }
}

/// The reason (and dry-run outcomes) the callee's sidecar logged for `request_id`.
async fn logged_reason(access_log: &Path, request_id: &str) -> Option<String> {
    for _ in 0..40 {
        let text = std::fs::read_to_string(access_log).unwrap_or_default();
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["request_id"] == request_id);
        if let Some(line) = line {
            let mut reason = line["reason"].as_str().unwrap_or_default().to_owned();
            for dry in line["dry_run"].as_array().into_iter().flatten() {
                let verdict = if dry["would_allow"] == true {
                    "allow"
                } else {
                    "deny"
                };
                reason.push_str(&format!(
                    "; dry-run {} would {verdict}",
                    dry["policy"].as_str().unwrap_or_default()
                ));
            }
            return Some(reason);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Prints the table; true when every call got its expected decision.
pub(super) fn print_table(mesh: &Mesh, script: &[Call], outcomes: &[Outcome]) -> bool {
    println!(
        "airlock demo: a CA at {} and five workloads on loopback",
        mesh.ca_url
    );
    println!("trust domain {TRUST_DOMAIN}; policies: examples/policies\n");
    println!(
        "{:<22} {:<38} {:<8} {:<6} {:<7} {:>6}  {:<3} reason (from the callee's access log)",
        "caller → callee", "request", "expected", "status", "verdict", "ms", "ok",
    );
    let mut all_ok = true;
    for (call, outcome) in script.iter().zip(outcomes) {
        let verdict = match outcome.status {
            200 => "allow",
            403 => "deny",
            _ => "error",
        };
        let expected = if call.allowed { "allow" } else { "deny" };
        let ok = verdict == expected;
        all_ok &= ok;
        println!(
            "{:<22} {:<38} {:<8} {:<6} {:<7} {:>6.1}  {:<3} {} ({})",
            format!("{} → {}", call.from, call.to),
            format!("{} {}", call.method, call.path),
            expected,
            outcome.status,
            verdict,
            outcome.millis,
            if ok { "yes" } else { "NO" },
            outcome.reason,
            &call.why,
        );
    }
    all_ok
}

pub(super) fn print_hints(mesh: &Mesh) {
    println!("\nCall the mesh yourself (each upstream listener carries its workload's identity):");
    for (from, to, addr) in &mesh.upstreams {
        let path = if *to == "checkout" {
            "/cart"
        } else {
            "/v1/status"
        };
        println!("  as {from:<9} → {to:<8}  curl -si -H 'Host: {to}' http://{addr}{path}");
    }
    println!("Metrics, and what each sidecar holds and decides:");
    for (name, health) in &mesh.health {
        println!(
            "  {name:<9}  http://{health}/metrics   airlock proxy status --admin {admin}   airlock tap --admin {admin}",
            admin = mesh.admin(name)
        );
    }
    println!("Access logs (JSON lines, secrets masked):");
    for (name, path) in &mesh.access_logs {
        println!("  {name:<9}  {}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grant_moves_to_a_window_around_the_start() {
        let start = OffsetDateTime::parse("2031-06-15T08:30:00.25Z", &Rfc3339).unwrap();
        let window = GrantWindow::around(start);
        let example = include_str!("../../examples/policies/payments.yaml");
        let moved = window.apply(example);
        for (_, written) in EXAMPLE_GRANT {
            assert!(
                example.contains(written),
                "the example still holds {written}"
            );
            assert!(!moved.contains(written), "{written} was replaced");
        }
        assert!(
            moved.contains("notBefore: \"2031-06-14T08:30:00Z\""),
            "{moved}"
        );
        assert!(
            moved.contains("expiresAt: \"2031-07-15T08:30:00Z\""),
            "{moved}"
        );
        assert!(window.contains(start));
        assert!(!window.contains(start + time::Duration::days(31)));
        assert_eq!(
            window.describe(),
            "time-bound grant, 2031-06-14 to 2031-07-15"
        );
        let other = include_str!("../../examples/policies/checkout.yaml");
        assert_eq!(
            window.apply(other),
            other,
            "control: other files are untouched"
        );
    }
}
