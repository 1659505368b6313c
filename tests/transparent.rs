//! Transparent capture end to end, in two network namespaces ("pods") joined by a veth
//! pair that this test creates. Each pod has its sidecar running as UID 1337 and the
//! capture rules of `airlock init-capture`; pod B runs an echo app on 127.0.0.1:8080.
//! A client in pod A, unaware of the mesh, connects straight to pod B's IP and port:
//! - the bytes arrive, carried by mTLS between the sidecars;
//! - tcpdump on pod B's veth never sees the plaintext marker;
//! - plaintext that bypasses pod A's sidecar is refused at pod B;
//! - a destination outside the mesh is refused and counted, unless an egress rule names
//!   it: then the sidecar relays it in plain TCP (its access log shows it), and only to
//!   the ports the rule lists;
//! - a connection to the service's virtual address (its ClusterIP, in the registry's
//!   `addresses`) is carried to the service's endpoint like one to the pod's own IP, and
//!   one to a virtual address the registry does not list is refused;
//! - once policy no longer allows pod A's identity, new connections are refused.
//!
//! The test re-runs itself inside pod A, so everything it starts lives there (pod B's
//! processes through `ip netns exec`). Both namespaces go away when it ends, also on
//! failure. Without root, `ip`, `iptables`, `tcpdump` or `setpriv` it says so and skips.

use std::io::BufRead;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use airlock_config::{Config, EgressRule, IdentityConfig, InboundPort, PortProtocol};
use airlock_testkit::*;

const TEST: &str = "a_mesh_unaware_client_is_carried_encrypted_and_authorized";
const INSIDE: &str = "AIRLOCK_TEST_POD_B";
const CHECKOUT: &str = "spiffe://example.org/ns/shop/sa/checkout";
const PAYMENTS: &str = "spiffe://example.org/ns/pay/sa/payments";
const POD_A: &str = "10.77.0.1";
const POD_B: &str = "10.77.0.2";
/// A second address of pod B that is not in the registry: "outside the mesh".
const EXTERNAL: &str = "10.77.0.3";
/// The payments service's virtual address (a ClusterIP): assigned to no interface, as in
/// Kubernetes, where only the capture rules give it meaning.
const CLUSTER_IP: &str = "10.96.0.10";
/// Pod B serves plaintext on this port of every address, left out of its capture.
const EXTERNAL_PORT: u16 = 9090;
const PROXY_UID: &str = "1337";

#[test]
fn a_mesh_unaware_client_is_carried_encrypted_and_authorized() {
    match std::env::var(INSIDE) {
        Ok(pod_b) => inside_pod_a(&pod_b),
        Err(_) => build_pods_and_run_inside(),
    }
}

fn build_pods_and_run_inside() {
    let tools = prerequisite(
        TEST,
        "`tcpdump`",
        has_program("tcpdump"),
        "apt-get install tcpdump",
    ) && prerequisite(
        TEST,
        "`setpriv`",
        has_program("setpriv"),
        "apt-get install util-linux",
    );
    if !tools {
        return;
    }
    let Some(pod_a) = Namespace::create("pod-a", TEST) else {
        return;
    };
    let pod_b = Namespace::create("pod-b", TEST).expect("root and ip were there a moment ago");
    let (veth_a, veth_b) = (
        format!("al{}a", std::process::id() % 100_000),
        format!("al{}b", std::process::id() % 100_000),
    );
    let root = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().unwrap();
        assert!(status.success(), "ip {args:?}");
    };
    root(&[
        "link", "add", &veth_a, "type", "veth", "peer", "name", &veth_b,
    ]);
    root(&["link", "set", &veth_a, "netns", &pod_a.0]);
    root(&["link", "set", &veth_b, "netns", &pod_b.0]);
    for (namespace, veth, ip) in [(&pod_a, &veth_a, POD_A), (&pod_b, &veth_b, POD_B)] {
        namespace.run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", veth]);
        namespace.run(&["ip", "link", "set", veth, "up"]);
    }
    pod_b.run(&[
        "ip",
        "addr",
        "add",
        &format!("{EXTERNAL}/24"),
        "dev",
        &veth_b,
    ]);
    let status = Command::new("ip")
        .args(["netns", "exec", &pod_a.0])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture"])
        .env(INSIDE, format!("{} {veth_b}", pod_b.0))
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the test failed inside pod A (see its output above)"
    );
}

/// A process killed when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A command that runs in pod B.
fn in_pod_b(pod_b: &str, program: &str) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", pod_b, program]);
    command
}

/// `program` as the sidecar's UID (so capture leaves its traffic alone), in pod B when
/// `pod_b` is given, else here in pod A.
fn as_proxy(pod_b: Option<&str>, program: &str) -> Command {
    let mut command = match pod_b {
        Some(pod) => in_pod_b(pod, "setpriv"),
        None => Command::new("setpriv"),
    };
    command.args([
        &format!("--reuid={PROXY_UID}"),
        &format!("--regid={PROXY_UID}"),
        "--clear-groups",
        program,
    ]);
    command
}

fn inside_pod_a(pod_b_and_veth: &str) {
    let (pod_b, veth_b) = pod_b_and_veth.split_once(' ').unwrap();
    let ca = TestCa::init("example.org");
    // The sidecars run as UID 1337: let them read their configs, tokens and the bundle.
    for dir in [ca.temp.path(), ca.dir.as_path()] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        ca.path("bundle.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let _ca_server = CaServer::start_at(&ca, &format!("{POD_A}:15012"));
    let policy_dir = ca.scratch("policies");
    std::fs::create_dir(&policy_dir).unwrap();
    std::fs::set_permissions(&policy_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let allow = |principal: &str| {
        let file = policy_dir.join("payments.yaml");
        std::fs::write(
            &file,
            format!(
                "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: payments, namespace: pay}}\nspec:\n  selector: {{identities: [{PAYMENTS}]}}\n  action: ALLOW\n  rules:\n  - from: [{{source: {{principals: [{principal}]}}}}]\n    to: [{{operation: {{ports: [8080]}}}}]\n"
            ),
        )
        .unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    };
    allow(CHECKOUT);
    // Fixed, well-known ports: the capture rules inside the pods redirect to them.
    let write_config = |name: &str, id: &str, ip: &str, build: &dyn Fn(&mut Config)| {
        let token = ca.scratch(&format!("{name}.token"));
        std::fs::write(&token, ca.token(id, &["--uses", "2"])).unwrap();
        let identity = IdentityConfig::new(
            "example.org".parse().unwrap(),
            format!("https://{POD_A}:15012"),
            ca.path("bundle.pem"),
            &token,
        );
        let mut config = Config::new(identity);
        config.inbound.listen = format!("{ip}:15008").parse().unwrap();
        config.admin.listen = "127.0.0.1:15000".parse().unwrap();
        config.admin.health_listen = format!("{ip}:15020").parse().unwrap();
        build(&mut config);
        let path = ca.scratch(&format!("{name}.yaml"));
        std::fs::write(&path, config.to_yaml()).unwrap();
        for file in [&token, &path] {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        path
    };
    let config_b = write_config("pod-b", PAYMENTS, POD_B, &|config| {
        config
            .inbound
            .ports
            .push(InboundPort::new(8080, PortProtocol::Tcp));
        config.policy.paths = vec![policy_dir.clone()];
        config.policy.reload_interval = Duration::from_millis(100);
    });
    let config_a = write_config("pod-a", CHECKOUT, POD_A, &|config| {
        config.outbound.transparent = Some("127.0.0.1:15001".parse().unwrap());
        config.outbound.egress.push(EgressRule {
            cidr: format!("{EXTERNAL}/32").parse().unwrap(),
            ports: vec![EXTERNAL_PORT],
        });
        let pod_b_mesh: SocketAddr = format!("{POD_B}:15008").parse().unwrap();
        let mut payments = service(PAYMENTS, &[pod_b_mesh]);
        payments.addresses = vec![CLUSTER_IP.parse().unwrap()];
        config.registry.insert("payments".into(), payments);
    });

    // Pod B's app: a plain TCP echo on every address, as apps usually listen; only the
    // capture rules keep plaintext away from it. It also echoes on EXTERNAL_PORT, which
    // stands for a service outside the mesh.
    let _app = Guard(
        in_pod_b(pod_b, "python3")
            .args([
                "-c",
                &format!(
                    "import socket, threading\n\
                     def echo(c):\n    while (d := c.recv(65536)): c.sendall(d)\n    c.close()\n\
                     def serve(port):\n    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n    s.bind(('0.0.0.0', port)); s.listen()\n    while True:\n        c, _ = s.accept(); threading.Thread(target=echo, args=(c,), daemon=True).start()\n\
                     threading.Thread(target=serve, args=({EXTERNAL_PORT},), daemon=True).start()\n\
                     serve(8080)\n"
                ),
            ])
            .spawn()
            .unwrap(),
    );
    let binary = env!("CARGO_BIN_EXE_airlock");
    wait_for("pod B's app to listen", || {
        in_pod_b(pod_b, "bash")
            .args(["-c", "exec 3<>/dev/tcp/127.0.0.1/8080"])
            .status()
            .is_ok_and(|s| s.success())
    });
    let start_sidecar = |pod_b: Option<&str>, name: &str, config: &std::path::Path| {
        let mut command = as_proxy(pod_b, binary);
        command.args(["proxy", "--config"]).arg(config);
        let log = ca.scratch(&format!("{name}.log"));
        let (child, line) = spawn_announcing(
            command.env("AIRLOCK_LOG", "info"),
            std::fs::File::create(&log).unwrap(),
        );
        assert!(
            line.contains("listening"),
            "{name}: {line:?} {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        (Guard(child), log)
    };
    let (_sidecar_b, log_b) = start_sidecar(Some(pod_b), "pod-b", &config_b);
    let (_sidecar_a, log_a) = start_sidecar(None, "pod-a", &config_a);
    let health = |pod: Option<&str>, ip: &str, path: &str| -> String {
        let mut command = match pod {
            Some(pod) => in_pod_b(pod, "curl"),
            None => Command::new("curl"),
        };
        stdout(&run(
            command.args(["-s", &format!("http://{ip}:15020{path}")])
        ))
    };
    wait_for("both sidecars ready", || {
        health(None, POD_A, "/ready").contains("ready")
            && health(Some(pod_b), POD_B, "/ready").contains("ready")
    });

    // Plaintext from pod A, sent as the sidecar's UID so pod A's capture will not take it:
    // without pod B's capture it reaches the app (the control for the check below).
    let plaintext_reaches_pod_b = || {
        let probe = run(as_proxy(None, "/usr/bin/python3").args([
            "-c",
            &format!(
                "import socket, sys\ntry:\n    s = socket.create_connection(('{POD_B}', 8080), timeout=5); s.sendall(b'probe'); sys.exit(0 if s.recv(100) == b'probe' else 3)\nexcept OSError:\n    sys.exit(3)\n"
            ),
        ]));
        probe.status.code() == Some(0)
    };
    assert!(
        plaintext_reaches_pod_b(),
        "the control: plaintext reaches an uncaptured pod"
    );

    // Capture, as the init containers would install it. Pod A's CA port stays reachable.
    ok(Command::new(binary).args(["init-capture", "--inbound-exclude-ports", "15012"]));
    ok(in_pod_b(pod_b, binary).args([
        "init-capture",
        "--inbound-exclude-ports",
        &EXTERNAL_PORT.to_string(),
    ]));

    let capture_file = ca.scratch("veth.pcap");
    let mut tcpdump = Guard(
        in_pod_b(pod_b, "tcpdump")
            // -Z root: keep writing the file as root (Debian's tcpdump drops to its own
            // user otherwise, which cannot write into the test's directory). Immediate
            // mode: packets are not held back in the kernel's ring until a block fills.
            .args([
                "-i",
                veth_b,
                "--immediate-mode",
                "-U",
                "-n",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&capture_file)
            .arg("tcp")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut started = String::new();
    std::io::BufReader::new(tcpdump.0.stderr.take().unwrap())
        .read_line(&mut started)
        .unwrap();
    assert!(started.contains("listening"), "tcpdump: {started}");

    // The client knows nothing of the mesh: it dials pod B's IP and the app's port.
    let marker = format!("PLAINTEXT-MARKER-{}", std::process::id());
    let target = SocketAddr::new(POD_B.parse().unwrap(), 8080);
    let mut stream = connect(target);
    let echoed = round_trip(&mut stream, marker.as_bytes());
    if echoed.as_deref() != Some(marker.as_bytes()) {
        std::thread::sleep(Duration::from_millis(500));
        let counters = |pod: Option<&str>| {
            let mut command = match pod {
                Some(pod) => in_pod_b(pod, "iptables"),
                None => Command::new("iptables"),
            };
            stdout(&run(command.args(["-t", "nat", "-L", "-v", "-n"])))
        };
        panic!(
            "no echo through the mesh\npod A rules:\n{}\npod B rules:\n{}\npod A log:\n{}\npod B log:\n{}",
            counters(None),
            counters(Some(pod_b)),
            std::fs::read_to_string(&log_a).unwrap_or_default(),
            std::fs::read_to_string(&log_b).unwrap_or_default()
        );
    }
    drop(stream);

    // Plaintext that skips pod A's sidecar (its UID is not captured) meets pod B's
    // capture, and pod B serves no plaintext.
    assert!(
        !plaintext_reaches_pod_b(),
        "plaintext reached pod B's app around its sidecar"
    );

    // The service's ClusterIP: routed (the kernel needs a route to dial it at all, as a
    // pod's default route gives it), captured, and carried to the service's endpoint.
    ok(Command::new("ip").args(["route", "add", "10.96.0.0/16", "via", POD_B]));
    let mut virtual_ip = connect(SocketAddr::new(CLUSTER_IP.parse().unwrap(), 8080));
    assert_eq!(
        round_trip(&mut virtual_ip, b"by cluster ip").as_deref(),
        Some(&b"by cluster ip"[..]),
        "a connection to the service's ClusterIP reaches its endpoint"
    );
    drop(virtual_ip);
    // The control: a virtual address the registry does not list is outside the mesh.
    let mut unlisted = connect(SocketAddr::new("10.96.0.11".parse().unwrap(), 8080));
    assert_eq!(round_trip(&mut unlisted, b"hello?"), None);

    // Outside the mesh: refused by pod A's sidecar, and counted.
    let mut outside = connect(SocketAddr::new("10.77.0.99".parse().unwrap(), 80));
    assert_eq!(round_trip(&mut outside, b"hello?"), None);
    wait_for("the egress refusal to be counted", || {
        metric(
            &health(None, POD_A, "/metrics"),
            "airlock_connect_refused_total{reason=\"egress_outside_mesh\"}",
        ) >= 2.0
    });

    // An egress rule lets pod A reach EXTERNAL on EXTERNAL_PORT, in plain TCP through
    // its sidecar, and on that port only.
    let mut allowed = connect(SocketAddr::new(EXTERNAL.parse().unwrap(), EXTERNAL_PORT));
    assert_eq!(
        round_trip(&mut allowed, b"egress").as_deref(),
        Some(&b"egress"[..]),
        "the egress rule's destination is reachable"
    );
    drop(allowed);
    wait_for("pod A to log the egress connection", || {
        std::fs::read_to_string(&log_a)
            .unwrap_or_default()
            .lines()
            .any(|line| {
                line.contains("\"reason\":\"egress rule\"")
                    && line.contains(&format!(
                        "\"destination_addr\":\"{EXTERNAL}:{EXTERNAL_PORT}\""
                    ))
            })
    });
    let mut other_port = connect(SocketAddr::new(
        EXTERNAL.parse().unwrap(),
        EXTERNAL_PORT + 1,
    ));
    assert_eq!(round_trip(&mut other_port, b"hello?"), None);
    wait_for(
        "the refusal of a port the egress rule does not list",
        || {
            metric(
                &health(None, POD_A, "/metrics"),
                "airlock_connect_refused_total{reason=\"egress_outside_mesh\"}",
            ) >= 3.0
        },
    );

    // Policy stops allowing pod A's identity: new connections are refused.
    allow("spiffe://example.org/ns/shop/sa/someone-else");
    wait_for("pod B to reload its policy", || {
        metric(
            &health(Some(pod_b), POD_B, "/metrics"),
            "airlock_policy_reloads_total",
        ) >= 1.0
    });
    let denied_before = metric(
        &health(Some(pod_b), POD_B, "/metrics"),
        "airlock_authz_total{decision=\"deny\"",
    );
    let mut refused = connect(target);
    assert_eq!(round_trip(&mut refused, marker.as_bytes()), None);
    wait_for("pod B to count the refusal", || {
        metric(
            &health(Some(pod_b), POD_B, "/metrics"),
            "airlock_authz_total{decision=\"deny\"",
        ) > denied_before
    });

    // Give tcpdump a moment to write what it saw, then read the capture.
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &tcpdump.0.id().to_string()])
        .status();
    let _ = tcpdump.0.wait();
    let pcap = std::fs::read(&capture_file).unwrap();
    let read = run(Command::new("tcpdump")
        .args(["-n", "-r"])
        .arg(&capture_file)
        .args(["tcp", "port", "15008"]));
    let text = stdout(&read);
    assert!(
        text.lines().count() > 5,
        "the mesh traffic must show on the veth ({} bytes captured): {text} {}",
        pcap.len(),
        stderr(&read)
    );
    assert!(
        !pcap.windows(marker.len()).any(|w| w == marker.as_bytes()),
        "the plaintext marker appeared on the wire"
    );
}
