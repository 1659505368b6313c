//! `airlock tap --admin ADDR [filters]`: a running sidecar's decisions and requests as
//! they happen, from the `GET /tap` stream of its loopback admin API, as columns or (with
//! `--json`) as the JSON lines the sidecar sends. The filters are applied by the sidecar.

use std::fmt::Display;
use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use airlock_identity::SpiffeId;
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::Failure;

/// Connecting, and the sidecar's answer to the request, give up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The sidecar sends a heartbeat every 10 s on a quiet stream: three missed ones mean it
/// is gone (a half-open connection would otherwise hang the command).
const SILENCE: Duration = Duration::from_secs(30);

/// The longest line accepted; a record is a few hundred bytes.
const MAX_LINE: usize = 1024 * 1024;

/// The largest error answer read (a 400 names the bad filter in one line).
const MAX_ERROR: usize = 4096;

#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  airlock tap --admin 127.0.0.1:15000
  airlock tap --admin 127.0.0.1:15000 --decision deny --path-prefix /admin
  airlock tap --admin 127.0.0.1:15000 --peer spiffe://demo.airlock/ns/shop/sa/checkout --json

Each line is a request or tunnel the sidecar finished (and `open` for a TCP tunnel that
starts), masked exactly as its access log masks it, even with the access log off. A tap
that cannot keep up loses lines and is told how many. Ctrl-C ends it.")]
pub(crate) struct TapArgs {
    /// The sidecar's admin listener (loopback only), as `admin.listen` says.
    #[arg(long, value_name = "ADDR")]
    admin: SocketAddr,
    /// Only this peer: the caller of an inbound request, the callee of an outbound tunnel.
    #[arg(long, value_name = "SPIFFE_ID", value_parser = parse_peer)]
    peer: Option<String>,
    /// Only requests whose path (as shown: normalized and masked) starts with this.
    #[arg(long, value_name = "PREFIX", value_parser = parse_prefix)]
    path_prefix: Option<String>,
    /// Only this decision.
    #[arg(long, value_enum)]
    decision: Option<DecisionArg>,
    /// Only this inbound (or outbound destination) port.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: Option<u16>,
    /// Print the sidecar's JSON lines as they come, for tools.
    #[arg(long)]
    json: bool,
}

/// `--decision`: what policy (or a shape or limit check) did.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum DecisionArg {
    Allow,
    Deny,
    /// Refused before authorization: a bad shape or a limit.
    Rejected,
}

fn parse_peer(text: &str) -> Result<String, String> {
    SpiffeId::parse(text)
        .map(|id| id.to_string())
        .map_err(|e| format!("not a SPIFFE ID: {e}"))
}

fn parse_prefix(text: &str) -> Result<String, String> {
    if text.starts_with('/') {
        Ok(text.to_owned())
    } else {
        Err("a path prefix starts with /".into())
    }
}

impl TapArgs {
    /// `/tap?…` with the filters, percent-encoded.
    fn path(&self) -> String {
        let decision = self.decision.map(|d| match d {
            DecisionArg::Allow => "allow",
            DecisionArg::Deny => "deny",
            DecisionArg::Rejected => "rejected",
        });
        let port = self.port.map(|p| p.to_string());
        let query: Vec<String> = [
            ("peer", self.peer.as_deref()),
            ("path_prefix", self.path_prefix.as_deref()),
            ("decision", decision),
            ("port", port.as_deref()),
        ]
        .into_iter()
        .filter_map(|(key, value)| Some(format!("{key}={}", encode(value?))))
        .collect();
        if query.is_empty() {
            "/tap".into()
        } else {
            format!("/tap?{}", query.join("&"))
        }
    }
}

/// Percent-encodes all but unreserved characters and `/`.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Streams until Ctrl-C (or SIGTERM, or a closed stdout): success. A sidecar that cannot
/// be reached, refuses, or ends the stream is a failure.
pub(crate) fn run(args: TapArgs) -> Result<(), Failure> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::failed)?;
    let interrupted = {
        let _context = runtime.enter();
        crate::logging::shutdown_signal()
    };
    runtime.block_on(async {
        tokio::select! {
            result = stream(&args) => result,
            () = interrupted => Ok(()),
        }
    })
}

async fn stream(args: &TapArgs) -> Result<(), Failure> {
    let admin = args.admin;
    let unreachable = |e: &dyn Display| {
        Failure::failed(format!(
            "--admin {admin}: cannot reach the sidecar's admin API: {e}"
        ))
    };
    let tcp = timeout(CONNECT_TIMEOUT, TcpStream::connect(admin))
        .await
        .map_err(|_| unreachable(&"timed out"))?
        .map_err(|e| unreachable(&e))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| unreachable(&e))?;
    tokio::spawn(connection);
    let path = args.path();
    let request = hyper::Request::get(path.as_str())
        .header(hyper::header::HOST, admin.to_string())
        .body(Empty::<Bytes>::new())
        .map_err(Failure::failed)?;
    let response = timeout(CONNECT_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| unreachable(&"no answer in time"))?
        .map_err(|e| unreachable(&e))?;
    let status = response.status();
    let mut body = response.into_body();
    if status != hyper::StatusCode::OK {
        let mut text = Vec::new();
        while text.len() < MAX_ERROR {
            match timeout(CONNECT_TIMEOUT, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    text.extend_from_slice(&frame.into_data().unwrap_or_default())
                }
                _ => break,
            }
        }
        let text = String::from_utf8_lossy(&text[..text.len().min(MAX_ERROR)]);
        let text = text.trim();
        return Err(match status.as_u16() {
            400 => Failure::usage(format!("the sidecar refused the filter: {text}")),
            404 => Failure::failed(format!(
                "--admin {admin}: /tap not found (is this an airlock sidecar's admin listener, of this version?)"
            )),
            _ => Failure::failed(format!("--admin {admin}: /tap answered {status}: {text}")),
        });
    }
    let mut printer = Printer {
        json: args.json,
        admin,
    };
    let mut pending = Vec::new();
    loop {
        let frame = match timeout(SILENCE, body.frame()).await {
            Err(_) => {
                return Err(Failure::failed(format!(
                    "--admin {admin}: the sidecar said nothing for {SILENCE:?} (not even a heartbeat); the tap ended"
                )));
            }
            Ok(None) => {
                return Err(Failure::failed(format!(
                    "--admin {admin}: the sidecar ended the tap (is it shutting down?)"
                )));
            }
            Ok(Some(Err(e))) => {
                return Err(Failure::failed(format!(
                    "--admin {admin}: the tap stream broke: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if printer
                .line(&String::from_utf8_lossy(&line[..end]))
                .is_err()
            {
                // stdout closed (`| head`): the reader has what it wanted.
                return Ok(());
            }
        }
        if pending.len() > MAX_LINE {
            return Err(Failure::failed(format!(
                "--admin {admin}: a tap line is longer than {MAX_LINE} bytes"
            )));
        }
    }
}

/// Writes the stream's lines to stdout, as they came or as columns.
struct Printer {
    json: bool,
    admin: SocketAddr,
}

impl Printer {
    fn line(&mut self, line: &str) -> std::io::Result<()> {
        // Empty lines are the sidecar's heartbeats.
        if line.trim().is_empty() {
            return Ok(());
        }
        let mut out = std::io::stdout().lock();
        if self.json {
            writeln!(out, "{line}")?;
            return out.flush();
        }
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            writeln!(out, "{line}")?;
            return out.flush();
        };
        match value["event"].as_str() {
            Some("tapping") => {
                eprintln!(
                    "tapping {} ({}); Ctrl-C to stop",
                    self.admin,
                    describe_filter(&value["filter"])
                );
                writeln!(out, "{}", header())?;
            }
            Some("dropped") => {
                let message = value["message"].as_str().unwrap_or("events dropped");
                writeln!(out, "... {message}")?;
            }
            Some("open" | "end") => writeln!(out, "{}", columns(&value))?,
            _ => writeln!(out, "{line}")?,
        }
        out.flush()
    }
}

fn describe_filter(filter: &Value) -> String {
    match filter.as_object() {
        Some(fields) if !fields.is_empty() => fields
            .iter()
            .map(|(key, value)| match value.as_str() {
                Some(text) => format!("{key}={text}"),
                None => format!("{key}={value}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => "everything".into(),
    }
}

fn header() -> String {
    format!(
        "{:<12} {:<3} {:<8} {:<6} {:>9} {:>5} {:<7} PEER  AUTHORITY  PATH  WHY",
        "TIME", "DIR", "DECISION", "STATUS", "LATENCY", "PORT", "METHOD"
    )
}

/// One record as a row: fixed-width columns first, the free-form ones after.
fn columns(record: &Value) -> String {
    let text = |key: &str| record[key].as_str().unwrap_or("-").to_owned();
    let time = record["time"]
        .as_str()
        .and_then(|t| t.split_once('T'))
        .map_or_else(
            || "-".to_owned(),
            |(_, clock)| clock.trim_end_matches('Z').to_owned(),
        );
    let outbound = record["direction"] == "outbound";
    let direction = if outbound { "out" } else { "in" };
    let status = match (record["status"].as_u64(), record["event"].as_str()) {
        (Some(status), _) => status.to_string(),
        (None, Some("open")) => "open".into(),
        (None, _) if record["decision"] == "allow" => "closed".into(),
        _ => "-".into(),
    };
    let latency = match (record["event"].as_str(), record["duration_ms"].as_f64()) {
        (Some("end"), Some(ms)) => format!("{ms:.1}ms"),
        _ => "-".into(),
    };
    let peer = if outbound {
        record["destination"]
            .as_str()
            .or(record["destination_addr"].as_str())
    } else {
        record["source"]
            .as_str()
            .or(record["source_addr"].as_str().map(|_| "unauthenticated"))
    };
    let mut why = text("reason");
    for dry in record["dry_run"].as_array().into_iter().flatten() {
        let verdict = if dry["would_allow"] == true {
            "allow"
        } else {
            "deny"
        };
        let rule = dry["rule"]
            .as_u64()
            .map_or_else(String::new, |r| format!(" (rule {r})"));
        why.push_str(&format!(
            "; dry-run {} would {verdict}{rule}",
            dry["policy"].as_str().unwrap_or("?")
        ));
    }
    format!(
        "{:<12} {:<3} {:<8} {:<6} {:>9} {:>5} {:<7} {}  {}  {}  {}",
        time,
        direction,
        text("decision"),
        status,
        latency,
        record["port"]
            .as_u64()
            .map_or_else(|| "-".into(), |p| p.to_string()),
        text("method"),
        peer.unwrap_or("-"),
        text("authority"),
        text("path"),
        why,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_encoded_into_the_query() {
        let args = TapArgs {
            admin: "127.0.0.1:15000".parse().unwrap(),
            peer: Some("spiffe://td/ns/a/sa/b".into()),
            path_prefix: Some("/a b&c".into()),
            decision: Some(DecisionArg::Deny),
            port: Some(8080),
            json: false,
        };
        assert_eq!(
            args.path(),
            "/tap?peer=spiffe%3A//td/ns/a/sa/b&path_prefix=/a%20b%26c&decision=deny&port=8080"
        );
    }

    #[test]
    fn a_denial_reads_as_a_row() {
        let record = serde_json::json!({
            "event": "end", "time": "2026-12-03T08:51:39.159Z", "direction": "inbound",
            "kind": "http", "source": "spiffe://td/ns/shop/sa/checkout", "port": 8080,
            "method": "GET", "path": "/admin/x", "authority": "payments:8080", "status": 403,
            "duration_ms": 1.25, "decision": "deny", "policy": "pay/no-admin", "rule": 0,
            "reason": "DENY policy pay/no-admin rule 0",
            "dry_run": [{"policy": "pay/lockdown", "would_allow": false, "rule": 1}],
        });
        let row = columns(&record);
        for part in [
            "08:51:39.159",
            " in ",
            "deny",
            "403",
            "1.2ms",
            "8080",
            "spiffe://td/ns/shop/sa/checkout",
            "/admin/x",
            "DENY policy pay/no-admin rule 0; dry-run pay/lockdown would deny (rule 1)",
        ] {
            assert!(row.contains(part), "{part:?} not in {row:?}");
        }
    }
}
