//! Transparent capture: the iptables rules that send a pod's TCP traffic through its
//! sidecar. `airlock init-capture` runs them in the pod's network namespace (an init
//! container with NET_ADMIN).
//!
//! Everything lives in two chains of the `nat` table that airlock owns, each entered by
//! one jump rule:
//! - `AIRLOCK_OUTPUT` (from `OUTPUT`): outbound TCP → the transparent listener (15001),
//!   except the sidecar's own traffic (its UID), loopback, and excluded ports and CIDRs;
//! - `AIRLOCK_INBOUND` (from `PREROUTING`): inbound TCP → the plaintext capture listener
//!   (15006), except the mesh port (15008), the health port (15020) and excluded ports.
//!   Plaintext to an app port thus meets the sidecar, which refuses it unless the port is
//!   permissive.
//!
//! The transparent listener reads IPv4 original destinations only, so IPv6 TCP is not
//! redirected but refused: chains of the same names in ip6tables' `filter` table reset
//! every IPv6 TCP connection except the sidecar's own, loopback, and the excluded ports.
//! A dual-stack pod therefore cannot leave the mesh, or be reached around it, by IPv6.
//!
//! Installing first removes whatever airlock installed before, so running it twice gives
//! the same rules; removing deletes exactly the jumps and the chains.

use std::net::Ipv4Addr;

use airlock_config::ports;
use ipnet::Ipv4Net;

/// The chain of outbound capture, entered from `OUTPUT` (in `nat`, and in ip6tables'
/// `filter`).
pub const OUTPUT_CHAIN: &str = "AIRLOCK_OUTPUT";
/// The chain of inbound capture, entered from `PREROUTING` in `nat` (from `INPUT` in
/// ip6tables' `filter`).
pub const INBOUND_CHAIN: &str = "AIRLOCK_INBOUND";

/// What to capture, with the defaults of docs/kubernetes.md.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureSpec {
    /// The sidecar's UID: its own connections are never captured.
    pub proxy_uid: u32,
    /// Where captured outbound TCP is redirected: the sidecar's transparent outbound
    /// listener (15001 by default).
    pub outbound_port: u16,
    /// Where captured inbound TCP is redirected: the sidecar's plaintext capture listener
    /// (15006 by default). Unused when `capture_inbound` is off.
    pub inbound_port: u16,
    /// Ports whose inbound traffic goes straight to the pod (the mesh transport and the
    /// health port at least).
    pub inbound_exclude_ports: Vec<u16>,
    /// Outbound destination ports left alone.
    pub outbound_exclude_ports: Vec<u16>,
    /// Outbound destinations left alone.
    pub outbound_exclude_cidrs: Vec<Ipv4Net>,
    /// Capture inbound traffic at all (off: outbound only).
    pub capture_inbound: bool,
}

impl Default for CaptureSpec {
    fn default() -> Self {
        Self {
            proxy_uid: ports::PROXY_UID,
            outbound_port: ports::OUTBOUND,
            inbound_port: ports::INBOUND_PLAINTEXT,
            inbound_exclude_ports: vec![ports::MESH, ports::HEALTH],
            outbound_exclude_ports: Vec::new(),
            outbound_exclude_cidrs: Vec::new(),
            capture_inbound: true,
        }
    }
}

/// One `iptables -t <table> ...` invocation, as its arguments after the table.
pub type Rule = Vec<String>;

fn rule(parts: &[&str]) -> Rule {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

/// One airlock chain: created, then exemptions (`RETURN`), then the action for all other
/// TCP, then the jump that enters it. Exemptions come first, and the jump last, so a
/// half-built chain never takes effect.
struct Chain {
    name: &'static str,
    rules: Vec<Rule>,
}

impl Chain {
    fn new(name: &'static str) -> Self {
        Self {
            name,
            rules: vec![rule(&["-N", name])],
        }
    }

    fn exempt(mut self, matcher: &[&str]) -> Self {
        let mut parts = vec!["-A", self.name];
        parts.extend_from_slice(matcher);
        parts.extend_from_slice(&["-j", "RETURN"]);
        self.rules.push(rule(&parts));
        self
    }

    fn exempt_ports(self, ports: &[u16]) -> Self {
        ports.iter().fold(self, |chain, port| {
            chain.exempt(&["-p", "tcp", "--dport", &port.to_string()])
        })
    }

    fn finish(mut self, action: &[&str], entered_from: &str) -> Vec<Rule> {
        let mut parts = vec!["-A", self.name, "-p", "tcp", "-j"];
        parts.extend_from_slice(action);
        self.rules.push(rule(&parts));
        self.rules
            .push(rule(&["-A", entered_from, "-p", "tcp", "-j", self.name]));
        self.rules
    }
}

const RESET: &[&str] = &["REJECT", "--reject-with", "tcp-reset"];

impl CaptureSpec {
    /// The `nat` rules that install the capture, in order.
    pub fn install(&self) -> Vec<Rule> {
        let loopback = Ipv4Net::new(Ipv4Addr::new(127, 0, 0, 0), 8).expect("valid prefix");
        let outbound = std::iter::once(&loopback)
            .chain(&self.outbound_exclude_cidrs)
            .fold(self.own_traffic_exempt(), |chain, cidr| {
                chain.exempt(&["-d", &cidr.to_string()])
            })
            .exempt_ports(&self.outbound_exclude_ports);
        let port = self.outbound_port.to_string();
        let mut rules = outbound.finish(&["REDIRECT", "--to-ports", &port], "OUTPUT");
        if self.capture_inbound {
            let port = self.inbound_port.to_string();
            rules.extend(
                Chain::new(INBOUND_CHAIN)
                    .exempt_ports(&self.inbound_exclude_ports)
                    .finish(&["REDIRECT", "--to-ports", &port], "PREROUTING"),
            );
        }
        rules
    }

    /// The ip6tables `filter` rules that refuse IPv6 TCP around the sidecar.
    pub fn install_ipv6(&self) -> Vec<Rule> {
        let mut rules = self
            .own_traffic_exempt()
            .exempt_ports(&self.outbound_exclude_ports)
            .finish(RESET, "OUTPUT");
        if self.capture_inbound {
            rules.extend(
                Chain::new(INBOUND_CHAIN)
                    .exempt(&["-i", "lo"])
                    .exempt_ports(&self.inbound_exclude_ports)
                    .finish(RESET, "INPUT"),
            );
        }
        rules
    }

    /// The outbound chain with the sidecar's own connections and loopback exempt.
    fn own_traffic_exempt(&self) -> Chain {
        Chain::new(OUTPUT_CHAIN)
            .exempt(&["-m", "owner", "--uid-owner", &self.proxy_uid.to_string()])
            .exempt(&["-o", "lo"])
    }
}

/// The ip6tables `filter` rules that remove what [`CaptureSpec::install_ipv6`] added.
pub fn removal_ipv6() -> Vec<Rule> {
    removal()
        .into_iter()
        .map(|mut r| {
            if r.get(1).is_some_and(|chain| chain == "PREROUTING") {
                r[1] = "INPUT".into();
            }
            r
        })
        .collect()
}

/// The rules that remove whatever airlock installed; each may fail harmlessly when its
/// target is already gone.
pub fn removal() -> Vec<Rule> {
    vec![
        rule(&["-D", "OUTPUT", "-p", "tcp", "-j", OUTPUT_CHAIN]),
        rule(&["-D", "PREROUTING", "-p", "tcp", "-j", INBOUND_CHAIN]),
        rule(&["-F", OUTPUT_CHAIN]),
        rule(&["-X", OUTPUT_CHAIN]),
        rule(&["-F", INBOUND_CHAIN]),
        rule(&["-X", INBOUND_CHAIN]),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rules: &[Rule]) -> Vec<String> {
        rules.iter().map(|r| r.join(" ")).collect()
    }

    #[test]
    fn default_capture() {
        assert_eq!(
            text(&CaptureSpec::default().install()),
            [
                "-N AIRLOCK_OUTPUT",
                "-A AIRLOCK_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A AIRLOCK_OUTPUT -o lo -j RETURN",
                "-A AIRLOCK_OUTPUT -d 127.0.0.0/8 -j RETURN",
                "-A AIRLOCK_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
                "-A OUTPUT -p tcp -j AIRLOCK_OUTPUT",
                "-N AIRLOCK_INBOUND",
                "-A AIRLOCK_INBOUND -p tcp --dport 15008 -j RETURN",
                "-A AIRLOCK_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A AIRLOCK_INBOUND -p tcp -j REDIRECT --to-ports 15006",
                "-A PREROUTING -p tcp -j AIRLOCK_INBOUND",
            ]
        );
    }

    #[test]
    fn exclusions_come_before_the_redirect() {
        let spec = CaptureSpec {
            proxy_uid: 2000,
            outbound_exclude_ports: vec![5432],
            outbound_exclude_cidrs: vec!["10.96.0.0/12".parse().unwrap()],
            capture_inbound: false,
            ..CaptureSpec::default()
        };
        let rules = text(&spec.install());
        let redirect = rules.iter().position(|r| r.contains("REDIRECT")).unwrap();
        for excluded in ["--uid-owner 2000", "-d 10.96.0.0/12", "--dport 5432"] {
            let at = rules.iter().position(|r| r.contains(excluded)).unwrap();
            assert!(at < redirect, "{excluded} after the redirect: {rules:?}");
        }
        assert!(!rules.iter().any(|r| r.contains("PREROUTING")));
    }

    #[test]
    fn ipv6_tcp_is_refused_around_the_sidecar() {
        assert_eq!(
            text(&CaptureSpec::default().install_ipv6()),
            [
                "-N AIRLOCK_OUTPUT",
                "-A AIRLOCK_OUTPUT -m owner --uid-owner 1337 -j RETURN",
                "-A AIRLOCK_OUTPUT -o lo -j RETURN",
                "-A AIRLOCK_OUTPUT -p tcp -j REJECT --reject-with tcp-reset",
                "-A OUTPUT -p tcp -j AIRLOCK_OUTPUT",
                "-N AIRLOCK_INBOUND",
                "-A AIRLOCK_INBOUND -i lo -j RETURN",
                "-A AIRLOCK_INBOUND -p tcp --dport 15008 -j RETURN",
                "-A AIRLOCK_INBOUND -p tcp --dport 15020 -j RETURN",
                "-A AIRLOCK_INBOUND -p tcp -j REJECT --reject-with tcp-reset",
                "-A INPUT -p tcp -j AIRLOCK_INBOUND",
            ]
        );
        assert!(text(&removal_ipv6()).contains(&"-D INPUT -p tcp -j AIRLOCK_INBOUND".to_owned()));
    }

    #[test]
    fn removal_undoes_the_jumps_before_the_chains() {
        let rules = text(&removal());
        let last_jump = rules.iter().rposition(|r| r.starts_with("-D ")).unwrap();
        let first_delete = rules.iter().position(|r| r.starts_with("-X ")).unwrap();
        assert!(last_jump < first_delete);
    }
}
