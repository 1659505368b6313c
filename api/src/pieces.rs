//! Large updates as several messages (`more`), so that neither side ever holds one
//! message the size of a whole mesh: a sender's encoding buffer grows to its largest
//! message and keeps that size for as long as its stream lives.

use prost::Message;

use crate::proto::{MeshUpdate, Policy, Service};

/// The largest message a subscriber takes: one piece of at most [`PER_MESSAGE`]
/// services, a service of 10,000 endpoints being about 300 KB.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
/// The largest update a subscriber puts together from pieces: a mesh of 1,000 services of
/// 10 endpoints is about 1 MB, so this leaves room for meshes far beyond that while a
/// controller that never ends an update cannot take a sidecar's memory.
pub const MAX_VIEW_BYTES: usize = 64 * 1024 * 1024;

/// How many services and policies one message carries at most: a few tens of KB.
pub const PER_MESSAGE: usize = 32;

/// Splits `update` into messages of at most `per_message` services and as many policies
/// (at least one message). The first keeps `full` and the removals; all but the last say
/// `more`.
pub fn split(update: MeshUpdate, per_message: usize) -> Vec<MeshUpdate> {
    let MeshUpdate {
        version,
        full,
        services,
        removed_services,
        policies,
        removed_policies,
        more: _,
    } = update;
    let head = MeshUpdate {
        version,
        full,
        removed_services,
        removed_policies,
        ..MeshUpdate::default()
    };
    Pieces::new(
        head,
        services.into_iter(),
        policies.into_iter(),
        per_message,
    )
    .collect()
}

/// The messages of one update, made as they are asked for: a sender that yields
/// services by reference and clones each only when its message is made never holds a
/// copy of the whole update.
pub struct Pieces<S, P> {
    /// The next message's version, `full` and removals; `None` once the last was made.
    head: Option<MeshUpdate>,
    services: S,
    policies: P,
    per_message: usize,
}

impl<S, P> Pieces<S, P>
where
    S: ExactSizeIterator<Item = Service>,
    P: ExactSizeIterator<Item = Policy>,
{
    /// The messages of the update whose version, `full` and removals are `head`'s, and
    /// whose services and policies are `services` and `policies`, at most `per_message`
    /// of each per message.
    pub fn new(head: MeshUpdate, services: S, policies: P, per_message: usize) -> Self {
        Self {
            head: Some(head),
            services,
            policies,
            per_message: per_message.max(1),
        }
    }
}

impl<S, P> Iterator for Pieces<S, P>
where
    S: ExactSizeIterator<Item = Service>,
    P: ExactSizeIterator<Item = Policy>,
{
    type Item = MeshUpdate;

    fn next(&mut self) -> Option<MeshUpdate> {
        let mut message = self.head.take()?;
        message
            .services
            .extend(self.services.by_ref().take(self.per_message));
        message
            .policies
            .extend(self.policies.by_ref().take(self.per_message));
        message.more = self.services.len() > 0 || self.policies.len() > 0;
        if message.more {
            self.head = Some(MeshUpdate {
                version: message.version.clone(),
                ..MeshUpdate::default()
            });
        }
        Some(message)
    }
}

/// Collects the messages of one update on the receiving side.
#[derive(Debug, Default)]
pub struct Reassembly {
    pending: Option<MeshUpdate>,
    /// Encoded bytes of the pending update's messages so far.
    bytes: usize,
}

impl Reassembly {
    /// Takes the next message: the whole update once its last message is in, `None`
    /// while more are to come, or why the messages do not make one update.
    pub fn push(&mut self, message: MeshUpdate) -> Result<Option<MeshUpdate>, String> {
        let more = message.more;
        self.bytes = if self.pending.is_some() {
            self.bytes
        } else {
            0
        } + message.encoded_len();
        if self.bytes > MAX_VIEW_BYTES {
            self.pending = None;
            return Err(format!(
                "update {} is over {MAX_VIEW_BYTES} bytes and still not whole",
                message.version
            ));
        }
        let whole = match self.pending.take() {
            None => message,
            Some(mut pending) => {
                if message.full || message.version != pending.version {
                    return Err(format!(
                        "update {} continued by a message of {}{}",
                        pending.version,
                        message.version,
                        if message.full { " saying full" } else { "" }
                    ));
                }
                pending.services.extend(message.services);
                pending.policies.extend(message.policies);
                pending.removed_services.extend(message.removed_services);
                pending.removed_policies.extend(message.removed_policies);
                pending
            }
        };
        if more {
            self.pending = Some(whole);
            Ok(None)
        } else {
            Ok(Some(MeshUpdate {
                more: false,
                ..whole
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(services: usize, policies: usize) -> MeshUpdate {
        MeshUpdate {
            version: "v7".into(),
            full: true,
            services: (0..services)
                .map(|i| Service {
                    name: format!("s{i}"),
                    ..Service::default()
                })
                .collect(),
            policies: (0..policies)
                .map(|i| Policy {
                    name: format!("p{i}"),
                    ..Policy::default()
                })
                .collect(),
            removed_services: vec!["gone".into()],
            ..MeshUpdate::default()
        }
    }

    #[test]
    fn an_update_split_and_reassembled_is_the_update() {
        // (services, policies, per message, messages)
        let cases = [
            (0, 0, 4, 1),
            (3, 1, 4, 1),
            (4, 4, 4, 1),
            (5, 0, 4, 2),
            (9, 2, 4, 3),
            (1, 9, 4, 3),
        ];
        for (services, policies, per_message, count) in cases {
            let original = update(services, policies);
            let messages = split(original.clone(), per_message);
            assert_eq!(messages.len(), count, "{services} {policies}");
            assert!(messages[0].full && messages[1..].iter().all(|m| !m.full));
            assert!(messages.iter().rev().skip(1).all(|m| m.more));
            assert!(!messages.last().unwrap().more);
            assert!(messages.iter().all(|m| m.services.len() <= per_message));
            let mut reassembly = Reassembly::default();
            let mut whole = None;
            for (i, message) in messages.into_iter().enumerate() {
                let pushed = reassembly.push(message).unwrap();
                assert_eq!(pushed.is_some(), i == count - 1);
                whole = pushed.or(whole);
            }
            assert_eq!(whole.unwrap(), original);
        }
    }

    #[test]
    fn messages_that_do_not_make_one_update_are_refused() {
        let mut pieces = split(update(9, 0), 4);
        let mut reassembly = Reassembly::default();
        reassembly.push(pieces.remove(0)).unwrap();
        let mut other = pieces.remove(0);
        other.version = "v8".into();
        assert!(reassembly.push(other).unwrap_err().contains("v8"));
        let mut reassembly = Reassembly::default();
        reassembly.push(split(update(9, 0), 4).remove(0)).unwrap();
        assert!(reassembly.push(update(1, 0)).unwrap_err().contains("full"));
    }

    #[test]
    fn an_update_that_grows_past_the_bound_is_refused() {
        let piece = |full| MeshUpdate {
            version: "v9".into(),
            full,
            more: true,
            services: vec![Service {
                name: "x".repeat(MAX_MESSAGE_BYTES - 64),
                ..Service::default()
            }],
            ..MeshUpdate::default()
        };
        let mut reassembly = Reassembly::default();
        assert_eq!(reassembly.push(piece(true)), Ok(None));
        for _ in 1..MAX_VIEW_BYTES / MAX_MESSAGE_BYTES {
            assert_eq!(reassembly.push(piece(false)), Ok(None), "within the bound");
        }
        let refused = reassembly.push(piece(false)).unwrap_err();
        assert!(refused.contains("still not whole"), "{refused}");
        // What it held is dropped: the next update starts afresh.
        let mut small = update(1, 0);
        small.full = true;
        assert_eq!(reassembly.push(small.clone()), Ok(Some(small)));
    }
}
