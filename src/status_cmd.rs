//! `airlock proxy status --admin ADDR`: one screen about a running sidecar, from its
//! admin API's `/status` (or that JSON itself with `--json`).

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use serde_json::Value;

use crate::Failure;
use crate::admin_client;

#[derive(Debug, Args)]
#[command(after_help = "Example:\n  airlock proxy status --admin 127.0.0.1:15000")]
pub(crate) struct StatusArgs {
    /// The sidecar's admin listener (`admin.listen`), HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    admin: SocketAddr,
    /// Print the sidecar's JSON answer instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: StatusArgs) -> Result<(), Failure> {
    let status = admin_client::call(args.admin, "GET", "/status", None)?;
    if args.json {
        println!("{status:#}");
    } else {
        print!("{}", render(&status, now()));
    }
    Ok(())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// "in 59m 12s" / "12s ago" from a number of seconds until (or since) a moment, to its
/// two largest units (a root's expiry need not be told to the second).
fn relative(seconds: i64) -> String {
    if seconds == 0 {
        return "just now".into();
    }
    let span = humantime::format_duration(Duration::from_secs(seconds.unsigned_abs())).to_string();
    let span = span.split(' ').take(2).collect::<Vec<_>>().join(" ");
    if seconds >= 0 {
        format!("in {span}")
    } else {
        format!("{span} ago")
    }
}

fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn yes(value: &Value) -> &'static str {
    if value.as_bool() == Some(true) {
        "yes"
    } else {
        "no"
    }
}

/// The human screen for the `/status` answer `s`, at Unix time `now`.
fn render(s: &Value, now: i64) -> String {
    let mut out = String::new();
    let mut line = |l: String| {
        out.push_str(&l);
        out.push('\n');
    };
    let id = &s["identity"];
    if id.is_null() {
        line("identity:    no SVID yet".into());
    } else {
        let expiry = id["not_after"].as_i64().unwrap_or(0) - now;
        let expiry = if expiry >= 0 {
            format!("expires {}", relative(expiry))
        } else {
            format!("EXPIRED {}", relative(expiry))
        };
        line(format!(
            "identity:    {} (serial {}, {expiry})",
            text(&id["spiffe_id"]),
            text(&id["serial"])
        ));
    }
    line(format!(
        "ready:       {} (draining: {})",
        yes(&s["ready"]),
        yes(&s["draining"])
    ));
    let roots = s["bundle_roots"].as_array().cloned().unwrap_or_default();
    line(format!(
        "trust:       {}, {} root(s)",
        text(&s["trust_domain"]),
        roots.len()
    ));
    for root in &roots {
        let expiry = root["not_after"].as_i64().unwrap_or(0) - now;
        line(format!(
            "  root       {} (expires {})",
            text(&root["subject"]),
            relative(expiry)
        ));
    }
    let policy = &s["policy"];
    line(format!(
        "policy:      version {} ({} policies, default {})",
        text(&policy["version"]),
        text(&policy["policies"]),
        text(&policy["default"])
    ));
    if let Some(error) = policy["last_error"].as_object() {
        let at = error.get("at").and_then(Value::as_i64).unwrap_or(now);
        line(format!(
            "  last reload REFUSED {}, the version above stays live: {}",
            relative(at - now),
            error.get("message").map(text).unwrap_or_default()
        ));
    }
    let registry = &s["registry"];
    let file = registry["registry_file"]
        .as_str()
        .map_or_else(String::new, |f| format!(" and {f}"));
    line(format!(
        "registry:    {} services (config file{file}), loaded {}",
        text(&registry["services"]),
        relative(-registry["age_s"].as_i64().unwrap_or(0))
    ));
    if let Some(controller) = s["controller"].as_object() {
        let field = |key: &str| controller.get(key).cloned().unwrap_or(Value::Null);
        let state = if field("connected").as_bool() == Some(true) {
            "connected"
        } else {
            "AWAY, serving its last view"
        };
        let held = match field("age_s").as_i64() {
            Some(age) => format!(
                "view {} ({} services, {} policies), applied {}",
                text(&field("version")).chars().take(12).collect::<String>(),
                text(&field("services")),
                text(&field("policies")),
                relative(-age)
            ),
            None => "no view yet (not ready)".into(),
        };
        line(format!(
            "controller:  {} {state}: {held}",
            text(&field("url"))
        ));
    }
    line("listeners:".into());
    let listeners = &s["listeners"];
    for (name, key) in [
        ("inbound", "inbound"),
        ("permissive", "permissive"),
        ("admin", "admin"),
        ("health", "health"),
        ("transparent", "transparent"),
    ] {
        if let Some(addr) = listeners[key].as_str() {
            line(format!("  {name:<11}{addr}"));
        }
    }
    for upstream in listeners["upstreams"].as_array().into_iter().flatten() {
        line(format!(
            "  upstream   {} -> {}:{}",
            text(&upstream["listen"]),
            text(&upstream["service"]),
            text(&upstream["port"])
        ));
    }
    line(format!(
        "connections: {} live (tunnels and requests in flight)",
        text(&s["connections"]["live"])
    ));
    let denials = s["denials"].as_array().cloned().unwrap_or_default();
    if denials.is_empty() {
        line("denials:     none recently".into());
    } else {
        line("recent denials (newest first):".into());
    }
    for denial in &denials {
        let at = denial["at"].as_i64().unwrap_or(now);
        let request = match (denial["method"].as_str(), denial["path"].as_str()) {
            (Some(method), Some(path)) => format!(" {method} {path}"),
            _ => " (tcp)".into(),
        };
        line(format!(
            "  {}  {} ({}) -> port {}{request}: {}",
            relative(at - now),
            text(&denial["peer"]),
            text(&denial["source_ip"]),
            text(&denial["port"]),
            text(&denial["reason"])
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_screen_names_what_matters() {
        let status = json!({
            "identity": {"spiffe_id": "spiffe://td/ns/a/sa/b", "serial": "01", "not_after": 160},
            "ready": true, "draining": false, "trust_domain": "td",
            "bundle_roots": [{"subject": "CN=root", "not_after": 1000}],
            "policy": {"version": "abc", "policies": 2, "default": "deny",
                       "last_error": {"at": 90, "message": "p.yaml:3:1: bad"}},
            "registry": {"services": 1, "registry_file": null, "age_s": 5},
            "controller": {"url": "https://ctl:15010", "connected": false, "version": "0123456789abcdef",
                           "services": 4, "policies": 2, "age_s": 30},
            "listeners": {"inbound": "127.0.0.1:1", "admin": "127.0.0.1:2", "health": "127.0.0.1:3",
                          "upstreams": [{"service": "pay", "port": 80, "listen": "127.0.0.1:4"}]},
            "connections": {"live": 3},
            "denials": [{"at": 99, "peer": "spiffe://td/ns/x/sa/y", "source_ip": "127.0.0.1",
                         "port": 80, "method": "GET", "path": "/admin", "reason": "no ALLOW policy matched"}],
        });
        let screen = render(&status, 100);
        for expected in [
            "spiffe://td/ns/a/sa/b (serial 01, expires in 1m)",
            "version abc (2 policies, default deny)",
            "REFUSED 10s ago",
            "p.yaml:3:1: bad",
            "upstream   127.0.0.1:4 -> pay:80",
            "loaded 5s ago",
            "controller:  https://ctl:15010 AWAY, serving its last view: view 0123456789ab (4 services, 2 policies), applied 30s ago",
            "3 live",
            "1s ago  spiffe://td/ns/x/sa/y (127.0.0.1) -> port 80 GET /admin: no ALLOW policy matched",
        ] {
            assert!(screen.contains(expected), "{expected:?} missing:\n{screen}");
        }
    }
}
