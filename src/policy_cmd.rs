//! `airlock policy check | eval | test`: the policy tools platform teams run locally and
//! in CI. Thin glue over the `airlock-policy` crate.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use airlock_identity::{SpiffeId, TrustDomain};
use airlock_policy::eval::{HttpRequest, RequestSpec};
use airlock_policy::lint::{LintContext, lint};
use airlock_policy::load::{LoadError, load};
use airlock_policy::model::Timestamp;
use airlock_policy::suite;
use airlock_policy::{Decision, DefaultMode, PolicySet};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::Failure;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Validate and lint policy files; exit 1 on errors, 0 with warnings only.
    Check {
        /// Policy files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// The mesh's trust domain: warn about selectors naming none of its identities.
        #[arg(long, value_parser = parse_trust_domain)]
        trust_domain: Option<TrustDomain>,
        /// Ports served as plain TCP (comma-separated): warn about HTTP-only rules on them.
        #[arg(long, value_delimiter = ',')]
        tcp_ports: Vec<u16>,
        #[command(flatten)]
        at: AtArg,
    },
    /// Decide one connection or request and print the decision with its reason.
    Eval(EvalArgs),
    /// Run the PolicyTest documents found in PATHs against the policies found there.
    Test {
        /// Files or directories holding policies and PolicyTest documents.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        at: AtArg,
    },
}

#[derive(Debug, Args)]
pub(crate) struct AtArg {
    /// Evaluate at this time (RFC 3339) instead of now.
    #[arg(long, value_parser = parse_time)]
    at: Option<i64>,
}

impl AtArg {
    fn unix(&self) -> i64 {
        self.at
            .unwrap_or_else(|| time::OffsetDateTime::now_utc().unix_timestamp())
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Protocol {
    Tcp,
    Http,
}

#[derive(Debug, Args)]
#[command(after_help = "Examples:
  airlock policy eval --policies policies/ --target spiffe://example.org/ns/pay/sa/payments \\
      --port 8080 --source spiffe://example.org/ns/shop/sa/checkout --method GET --path /v1/charges
  airlock policy eval --admin 127.0.0.1:15000 --port 8080 \\
      --source spiffe://example.org/ns/shop/sa/checkout --path /admin")]
pub(crate) struct EvalArgs {
    /// Policy file or directory (repeatable).
    #[arg(
        long = "policies",
        required_unless_present = "admin",
        conflicts_with = "admin"
    )]
    policies: Vec<PathBuf>,
    /// Ask the running sidecar whose admin listener is ADDR instead: its loaded policies,
    /// its configured default, and its own identity as the target.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// The workload being called.
    #[arg(long, value_parser = parse_spiffe_id, required_unless_present = "admin", conflicts_with = "admin")]
    target: Option<SpiffeId>,
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    port: u16,
    /// The caller's SPIFFE ID; without it the caller is an unauthenticated (plaintext) peer.
    #[arg(long, value_parser = parse_spiffe_id)]
    source: Option<SpiffeId>,
    #[arg(long)]
    source_ip: Option<IpAddr>,
    /// Default: http when any of --method/--path/--host/--header is given, else tcp.
    #[arg(long, value_enum)]
    protocol: Option<Protocol>,
    #[arg(long)]
    method: Option<String>,
    #[arg(long)]
    path: Option<String>,
    #[arg(long)]
    host: Option<String>,
    /// A request header as NAME=VALUE (repeatable; repeats of one name are joined).
    #[arg(long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// The workload default when no policy decides (with --admin: the sidecar's own).
    #[arg(long, default_value = "deny", value_parser = parse_default, conflicts_with = "admin")]
    default: DefaultMode,
    #[command(flatten)]
    at: AtArg,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_trust_domain(text: &str) -> Result<TrustDomain, String> {
    TrustDomain::parse(text).map_err(|e| e.to_string())
}

fn parse_spiffe_id(text: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(text).map_err(|e| e.to_string())
}

fn parse_time(text: &str) -> Result<i64, String> {
    Timestamp::parse(text).map(|t| t.0)
}

fn parse_default(text: &str) -> Result<DefaultMode, String> {
    text.parse()
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(n, v)| (n.trim().to_owned(), v.to_owned()))
        .filter(|(n, _)| !n.is_empty())
        .ok_or_else(|| format!("{text:?} is not NAME=VALUE"))
}

pub(crate) fn run(command: PolicyCommand) -> Result<(), Failure> {
    match command {
        PolicyCommand::Check {
            paths,
            trust_domain,
            tcp_ports,
            at,
        } => check(
            &paths,
            LintContext {
                now: at.unix(),
                tcp_ports,
                trust_domain,
            },
        ),
        PolicyCommand::Eval(args) => eval(args),
        PolicyCommand::Test { paths, at } => test(&paths, at.unix()),
    }
}

fn load_or_report(paths: &[PathBuf]) -> Result<airlock_policy::load::Documents, Failure> {
    load(paths).map_err(|errors| {
        report_errors(&errors);
        Failure::failed(format!("{} error(s) in the policy files", errors.len()))
    })
}

fn report_errors(errors: &[LoadError]) {
    for error in errors {
        eprintln!("{error}");
    }
}

fn check(paths: &[PathBuf], context: LintContext) -> Result<(), Failure> {
    let documents = load_or_report(paths)?;
    let set = PolicySet::new(documents.policies);
    let warnings = lint(&set, &context);
    for warning in &warnings {
        eprintln!("{warning}");
    }
    println!(
        "{} policies, {} test suites: ok, {} warning(s)",
        set.len(),
        documents.tests.len(),
        warnings.len()
    );
    Ok(())
}

fn eval(args: EvalArgs) -> Result<(), Failure> {
    let has_http_flags = args.method.is_some()
        || args.path.is_some()
        || args.host.is_some()
        || !args.headers.is_empty();
    let http = match args.protocol {
        Some(Protocol::Tcp) if has_http_flags => {
            return Err(Failure::usage(
                "--protocol tcp cannot be combined with --method, --path, --host or --header",
            ));
        }
        Some(Protocol::Tcp) => false,
        Some(Protocol::Http) => true,
        None => has_http_flags,
    };
    if let Some(admin) = args.admin {
        return eval_live(admin, &args, http);
    }
    let set = PolicySet::new(load_or_report(&args.policies)?.policies);
    let http = http
        .then(|| {
            HttpRequest::from_raw(
                args.method.as_deref().unwrap_or("GET"),
                args.path.as_deref().unwrap_or("/"),
                args.host.as_deref().unwrap_or_default(),
                args.headers,
            )
        })
        .transpose();
    let http = match http {
        Ok(http) => http,
        Err(refusal) => {
            // The proxy answers such a request 400 before any policy runs.
            let reason = format!("request refused before policy (400): {refusal}");
            if args.json {
                println!(
                    "{}",
                    json!({"decision": "deny", "reason": reason, "policy": null, "rule": null, "dry_run": []})
                );
            } else {
                println!("decision: deny\nreason:   {reason}");
            }
            return Ok(());
        }
    };
    let spec = RequestSpec {
        target: args.target.expect("clap requires --target without --admin"),
        port: args.port,
        source: args.source,
        source_ip: args.source_ip,
        http,
        now: args.at.unix(),
    };
    print_decision(&set.evaluate_spec(&spec, args.default), args.json);
    Ok(())
}

/// `policy eval --admin`: the same question, answered by the running sidecar (whose
/// `/policy/eval` also normalizes the request and reports a refused shape).
fn eval_live(admin: SocketAddr, args: &EvalArgs, http: bool) -> Result<(), Failure> {
    let headers: Vec<_> = args
        .headers
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let mut body = json!({
        "port": args.port,
        "protocol": if http { "http" } else { "tcp" },
        "headers": headers,
    });
    let optional = [
        ("source", args.source.as_ref().map(ToString::to_string)),
        ("source_ip", args.source_ip.map(|ip| ip.to_string())),
        ("method", args.method.clone()),
        ("path", args.path.clone()),
        ("host", args.host.clone()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            body[name] = json!(value);
        }
    }
    if let Some(at) = args.at.at {
        body["at"] = json!(at);
    }
    let answer = crate::admin_client::call(admin, "POST", "/policy/eval", Some(&body))?;
    print_outcome(&answer, args.json);
    Ok(())
}

fn print_decision(decision: &Decision, as_json: bool) {
    print_outcome(&decision.to_json(), as_json);
}

/// Prints a decision in the shape `print_decision` builds (a sidecar's `/policy/eval`
/// answers the same shape, plus the version of its policy set).
fn print_outcome(outcome: &Value, as_json: bool) {
    if as_json {
        println!("{outcome}");
        return;
    }
    let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    println!("decision: {}", text(&outcome["decision"]));
    println!("reason:   {}", text(&outcome["reason"]));
    for dry in outcome["dry_run"].as_array().into_iter().flatten() {
        let rule = dry["rule"]
            .as_u64()
            .map_or("no rule matched".to_owned(), |r| format!("rule {r}"));
        println!(
            "dry-run:  {} would {} ({rule})",
            text(&dry["policy"]),
            text(&dry["decision"])
        );
    }
    if let Some(version) = outcome["policy_version"].as_str() {
        println!(
            "version:  {version} ({} policies, default {}, target {})",
            outcome["policies"],
            text(&outcome["default"]),
            text(&outcome["target"])
        );
    }
}

fn test(paths: &[PathBuf], now: i64) -> Result<(), Failure> {
    let documents = load_or_report(paths)?;
    if documents.tests.is_empty() {
        return Err(Failure::failed(
            "no PolicyTest documents found in the given paths",
        ));
    }
    let set = PolicySet::new(documents.policies);
    let (mut passed, mut failed) = (0, 0);
    for (origin, test) in &documents.tests {
        for outcome in suite::run(&set, test, now) {
            if outcome.passed {
                passed += 1;
                println!("PASS {} / {}", test.metadata.name, outcome.case);
            } else {
                failed += 1;
                println!(
                    "FAIL {} / {} ({origin}): expected {}, got {}",
                    test.metadata.name, outcome.case, outcome.expected, outcome.got
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        return Err(Failure::failed(format!(
            "{failed} policy test case(s) failed"
        )));
    }
    Ok(())
}
