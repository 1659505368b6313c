//! The mesh view: every service and policy a source knows, and what one subscriber of it
//! is sent. Pure: sources build a [`MeshView`], the server cuts it per subscriber
//! ([`MeshView::for_subscriber`]) and sends the difference from what that subscriber
//! already holds ([`SubscriberView::update_from`]).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use airlock_api::pieces::Pieces;
use airlock_api::proto::{MeshUpdate, Policy as WirePolicy, Service as WireService};
use airlock_identity::SpiffeId;
use airlock_policy::Policy;

/// A policy as it travels, and as the controller reads it to know whom it selects.
#[derive(Debug, Clone)]
pub struct ViewPolicy {
    /// What subscribers receive.
    pub wire: WirePolicy,
    /// The same document read by the policy loader.
    pub parsed: Policy,
}

impl ViewPolicy {
    /// Reads `document` (one AuthorizationPolicy, YAML or JSON) from `source` with the
    /// policy loader, as the sidecar will; `Err` holds the loader's messages
    /// (file:line:column, the file being `source`).
    pub fn from_document(source: &str, document: String) -> Result<Self, String> {
        let documents = airlock_policy::load::parse_text(Path::new(source), &document)
            .map_err(|errors| airlock_policy::load::joined(&errors))?;
        let parsed = match <[Policy; 1]>::try_from(documents.policies) {
            Ok([parsed]) => parsed,
            Err(policies) => {
                return Err(format!(
                    "{source}: holds {} AuthorizationPolicy documents, not one",
                    policies.len()
                ));
            }
        };
        let (namespace, name) = parsed
            .id
            .as_str()
            .split_once('/')
            .expect("a policy id is namespace/name");
        let wire = WirePolicy {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            source: source.to_owned(),
            document,
        };
        Ok(Self { wire, parsed })
    }

    /// `namespace/name`.
    pub fn key(&self) -> &str {
        self.parsed.id.as_str()
    }
}

/// Services by name, each behind an `Arc` so that views and subscribers share them.
pub type Services = BTreeMap<String, Arc<WireService>>;

/// The whole mesh as one source sees it, with its version.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    /// By service name; every subscriber's cut shares this one map.
    pub services: Arc<Services>,
    /// By `namespace/name`.
    pub policies: BTreeMap<String, ViewPolicy>,
    /// [`airlock_api::view_version`] of the two.
    pub version: String,
}

impl MeshView {
    /// The view of `services` and `policies`, versioned by their content.
    pub fn new(services: Vec<WireService>, policies: Vec<ViewPolicy>) -> Self {
        let version = airlock_api::view_version(services.iter(), policies.iter().map(|p| &p.wire));
        Self {
            services: Arc::new(
                services
                    .into_iter()
                    .map(|s| (s.name.clone(), Arc::new(s)))
                    .collect(),
            ),
            policies: policies
                .into_iter()
                .map(|p| (p.key().to_owned(), p))
                .collect(),
            version,
        }
    }

    /// This view, holding `previous`'s very `Arc` for every service that did not change
    /// (and `previous`'s map when no service did): one comparison per service here
    /// spares one per service and subscriber when the cuts are compared.
    pub fn reusing(mut self, previous: &MeshView) -> Self {
        if *self.services == *previous.services {
            self.services = previous.services.clone();
            return self;
        }
        let services = Arc::make_mut(&mut self.services);
        for (name, service) in services.iter_mut() {
            if let Some(known) = previous
                .services
                .get(name)
                .filter(|known| **known == *service)
            {
                *service = known.clone();
            }
        }
        self
    }

    /// What `subscriber` is sent: every service (it may call any of them), and only the
    /// policies that select it, by identity, by namespace, or as mesh-wide policies.
    pub fn for_subscriber(&self, subscriber: &SpiffeId) -> SubscriberView {
        SubscriberView {
            version: self.version.clone(),
            services: self.services.clone(),
            policies: self
                .policies
                .iter()
                .filter(|(_, policy)| policy.parsed.selects(subscriber))
                .map(|(key, policy)| (key.clone(), policy.wire.clone()))
                .collect(),
        }
    }
}

/// An update's messages (see [`airlock_api::pieces`]), each made when it is asked for.
pub type Messages<'a> = Box<dyn Iterator<Item = MeshUpdate> + Send + 'a>;

/// One subscriber's cut of a [`MeshView`]: what it holds once it applied everything sent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SubscriberView {
    /// The view's version.
    pub version: String,
    /// By service name (the view's own map).
    pub services: Arc<Services>,
    /// By `namespace/name`.
    pub policies: BTreeMap<String, WirePolicy>,
}

impl SubscriberView {
    /// The whole view (`full`), as messages of at most `per_message` services and
    /// policies, each service cloned only when its message is made.
    pub fn snapshot(&self, per_message: usize) -> Messages<'_> {
        let head = MeshUpdate {
            version: self.version.clone(),
            full: true,
            ..MeshUpdate::default()
        };
        Box::new(Pieces::new(
            head,
            self.services.values().map(|s| (**s).clone()),
            self.policies.values().cloned(),
            per_message,
        ))
    }

    /// The change that turns `held` into this view, as messages of at most
    /// `per_message` services and policies; `None` when nothing changed at all.
    pub fn update_from(
        &self,
        held: &SubscriberView,
        per_message: usize,
    ) -> Option<Messages<'static>> {
        let (services, removed_services) = if Arc::ptr_eq(&self.services, &held.services) {
            (Vec::new(), Vec::new())
        } else {
            changes(&held.services, &self.services, |a, b| {
                Arc::ptr_eq(a, b) || a == b
            })
        };
        let (policies, removed_policies) = changes(&held.policies, &self.policies, |a, b| a == b);
        let same = services.is_empty()
            && removed_services.is_empty()
            && policies.is_empty()
            && removed_policies.is_empty();
        if same && self.version == held.version {
            return None;
        }
        let head = MeshUpdate {
            version: self.version.clone(),
            removed_services,
            removed_policies,
            ..MeshUpdate::default()
        };
        Some(Box::new(Pieces::new(
            head,
            services.into_iter().map(|s| (*s).clone()),
            policies.into_iter(),
            per_message,
        )))
    }
}

/// What is new or different in `now` against `before` (by `same`), and the keys `now`
/// lost.
fn changes<T: Clone>(
    before: &BTreeMap<String, T>,
    now: &BTreeMap<String, T>,
    same: impl Fn(&T, &T) -> bool,
) -> (Vec<T>, Vec<String>) {
    let changed = now
        .iter()
        .filter(|(key, value)| before.get(*key).is_none_or(|old| !same(old, value)))
        .map(|(_, value)| value.clone())
        .collect();
    let removed = before
        .keys()
        .filter(|key| !now.contains_key(*key))
        .cloned()
        .collect();
    (changed, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, endpoint: &str) -> WireService {
        WireService {
            name: name.into(),
            identity: format!("spiffe://td/ns/shop/sa/{name}"),
            endpoints: vec![airlock_api::proto::Endpoint {
                address: endpoint.into(),
                ready: true,
                serving: true,
                ..Default::default()
            }],
            ..WireService::default()
        }
    }

    fn policy(namespace: &str, name: &str, selector: &str) -> ViewPolicy {
        let document = format!(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\n\
             metadata: {{name: {name}, namespace: {namespace}}}\n\
             spec:\n  {selector}action: ALLOW\n  rules: [{{}}]\n"
        );
        ViewPolicy::from_document(&format!("{namespace}-{name}.yaml"), document).unwrap()
    }

    fn id(text: &str) -> SpiffeId {
        SpiffeId::parse(text).unwrap()
    }

    #[test]
    fn a_subscriber_gets_every_service_and_only_the_policies_that_select_it() {
        let view = MeshView::new(
            vec![
                service("api", "10.0.0.1:15008"),
                service("db", "10.0.0.2:15008"),
            ],
            vec![
                policy(
                    "shop",
                    "api-only",
                    "selector: {identities: [spiffe://td/ns/shop/sa/api]}\n  ",
                ),
                policy("shop", "shop-wide", "selector: {namespaces: [shop]}\n  "),
                policy("bank", "bank-wide", "selector: {namespaces: [bank]}\n  "),
                policy("mesh", "everyone", ""),
            ],
        );
        let cases = [
            (
                "spiffe://td/ns/shop/sa/api",
                vec!["mesh/everyone", "shop/api-only", "shop/shop-wide"],
            ),
            (
                "spiffe://td/ns/shop/sa/web",
                vec!["mesh/everyone", "shop/shop-wide"],
            ),
            (
                "spiffe://td/ns/bank/sa/ledger",
                vec!["bank/bank-wide", "mesh/everyone"],
            ),
            ("spiffe://td/ns/other/sa/x", vec!["mesh/everyone"]),
        ];
        for (subscriber, expected) in cases {
            let cut = view.for_subscriber(&id(subscriber));
            let keys: Vec<&str> = cut.policies.keys().map(String::as_str).collect();
            assert_eq!(keys, expected, "{subscriber}");
            assert_eq!(cut.services.len(), 2, "{subscriber} sees every service");
            assert_eq!(cut.version, view.version);
        }
    }

    #[test]
    fn updates_carry_only_what_changed() {
        let subscriber = id("spiffe://td/ns/shop/sa/api");
        let before = MeshView::new(
            vec![
                service("api", "10.0.0.1:15008"),
                service("db", "10.0.0.2:15008"),
            ],
            vec![policy("shop", "a", ""), policy("shop", "b", "")],
        )
        .for_subscriber(&subscriber);
        let after = MeshView::new(
            vec![
                service("api", "10.0.0.9:15008"),
                service("cache", "10.0.0.3:15008"),
            ],
            vec![policy("shop", "a", "")],
        )
        .for_subscriber(&subscriber);
        let update = whole(after.update_from(&before, 64).unwrap());
        assert!(!update.full);
        let names: Vec<&str> = update.services.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            ["api", "cache"],
            "changed and added, not the unchanged"
        );
        assert_eq!(update.removed_services, ["db"]);
        assert!(update.policies.is_empty(), "policy a did not change");
        assert_eq!(update.removed_policies, ["shop/b"]);
        assert_eq!(update.version, after.version);
        assert!(
            after.update_from(&after, 64).is_none(),
            "the control: nothing to send"
        );
        let snapshot = whole(after.snapshot(64));
        assert!(snapshot.full);
        assert_eq!(snapshot.services.len(), 2);
        assert_eq!(snapshot.policies.len(), 1);
        // In pieces of one service: two messages, the first full, the last without more.
        let pieces: Vec<MeshUpdate> = after.snapshot(1).collect();
        assert_eq!(pieces.len(), 2);
        assert!(pieces[0].full && pieces[0].more && !pieces[1].full && !pieces[1].more);
    }

    /// The update its messages make.
    fn whole(messages: Messages<'_>) -> MeshUpdate {
        let mut reassembly = airlock_api::pieces::Reassembly::default();
        let mut whole = None;
        for message in messages {
            whole = reassembly.push(message).unwrap().or(whole);
        }
        whole.expect("a last message")
    }

    #[test]
    fn a_new_view_shares_what_did_not_change_with_the_last() {
        let first = MeshView::new(
            vec![
                service("api", "10.0.0.1:15008"),
                service("db", "10.0.0.2:15008"),
            ],
            vec![],
        );
        let same = MeshView::new(
            vec![
                service("api", "10.0.0.1:15008"),
                service("db", "10.0.0.2:15008"),
            ],
            vec![policy("shop", "a", "")],
        )
        .reusing(&first);
        assert!(
            Arc::ptr_eq(&same.services, &first.services),
            "no service changed"
        );
        let moved = MeshView::new(
            vec![
                service("api", "10.0.0.9:15008"),
                service("db", "10.0.0.2:15008"),
            ],
            vec![],
        )
        .reusing(&first);
        assert!(Arc::ptr_eq(&moved.services["db"], &first.services["db"]));
        assert!(!Arc::ptr_eq(&moved.services["api"], &first.services["api"]));
        // Cut for a subscriber, the unchanged service is not sent again.
        let subscriber = id("spiffe://td/ns/shop/sa/api");
        let update = whole(
            moved
                .for_subscriber(&subscriber)
                .update_from(&first.for_subscriber(&subscriber), 64)
                .unwrap(),
        );
        assert_eq!(update.services.len(), 1);
        assert_eq!(update.services[0].name, "api");
    }

    #[test]
    fn a_wire_policy_must_be_one_valid_document() {
        let read = |document: &str| {
            ViewPolicy::from_document("AuthorizationPolicy shop/p", document.to_owned())
        };
        let good = read(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {action: ALLOW}\n",
        )
        .unwrap();
        assert_eq!(
            (good.wire.namespace.as_str(), good.wire.name.as_str()),
            ("shop", "p")
        );
        assert_eq!(good.key(), "shop/p");
        let error = read(
            "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  action: PERMIT\n",
        )
        .unwrap_err();
        assert!(
            error.starts_with("AuthorizationPolicy shop/p:5:"),
            "{error}"
        );
        let two = "apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec: {action: ALLOW}\n---\n\
                   apiVersion: airlock.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: q, namespace: shop}\nspec: {action: ALLOW}\n";
        assert!(read(two).unwrap_err().contains("not one"));
    }
}
