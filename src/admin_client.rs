//! The CLI's side of a sidecar's loopback admin API: one HTTP/1.1 exchange per call,
//! under timeouts and a size cap, so that a wrong address or a stuck sidecar ends the
//! command instead of hanging it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use serde_json::Value;

use crate::Failure;

/// Connecting, and each read and write, give up after this long.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The largest answer read: `/status` is a few KiB.
const MAX_RESPONSE: u64 = 4 * 1024 * 1024;

/// Sends `method path` (with a JSON `body`) to the admin API at `admin` and returns the
/// JSON it answered. A status other than 200 is a failure carrying the sidecar's
/// `error` text; 400 (the request was invalid) is a usage failure.
pub(crate) fn call(
    admin: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, Failure> {
    let unreachable = |e: std::io::Error| {
        Failure::failed(format!(
            "--admin {admin}: cannot reach the sidecar's admin API: {e}"
        ))
    };
    let mut stream = TcpStream::connect_timeout(&admin, TIMEOUT).map_err(unreachable)?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    stream
        .set_write_timeout(Some(TIMEOUT))
        .map_err(unreachable)?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).map_err(unreachable)?;
    let mut response = Vec::new();
    stream
        .take(MAX_RESPONSE)
        .read_to_end(&mut response)
        .map_err(unreachable)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| Failure::failed(format!("--admin {admin}: the answer is not HTTP")))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let json: Option<Value> = serde_json::from_str(body).ok();
    let error = || {
        json.as_ref()
            .and_then(|j| j["error"].as_str())
            .map_or_else(|| body.trim().to_owned(), str::to_owned)
    };
    match status {
        200 => {
            json.ok_or_else(|| Failure::failed(format!("--admin {admin}: {path} answered no JSON")))
        }
        400 => Err(Failure::usage(format!(
            "the sidecar refused the request: {}",
            error()
        ))),
        404 => Err(Failure::failed(format!(
            "--admin {admin}: {path} not found (is this an airlock sidecar's admin listener, of this version?)"
        ))),
        _ => Err(Failure::failed(format!(
            "--admin {admin}: {path} answered {status}: {}",
            error()
        ))),
    }
}
