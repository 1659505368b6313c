//! What a sidecar reads from its controller or its cache file: any bytes decode to a
//! `MeshUpdate` or fail cleanly; every wire service either converts to a registry entry
//! that converts back the same, or is refused with a field; messages reassemble or are
//! refused; policy documents load or are refused.
#![no_main]

use std::path::Path;

use airlock_api::pieces::{Reassembly, split};
use airlock_api::proto::MeshUpdate;
use airlock_api::{service_from_wire, service_to_wire};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(update) = MeshUpdate::decode(data) else {
        return;
    };
    for service in &update.services {
        if let Ok(entry) = service_from_wire(service) {
            let again = service_from_wire(&service_to_wire(&service.name, &entry))
                .expect("an entry's wire form converts back");
            assert_eq!(again, entry);
        }
    }
    for policy in &update.policies {
        if let Err(errors) = airlock_policy::load::parse_text(Path::new(&policy.source), &policy.document) {
            assert!(!errors.is_empty());
        }
    }
    let mut received = Reassembly::default();
    let _ = received.push(update.clone());
    let mut whole = None;
    let mut reassembly = Reassembly::default();
    for message in split(update.clone(), 2) {
        whole = reassembly.push(message).expect("a split update reassembles");
    }
    assert_eq!(whole, Some(MeshUpdate { more: false, ..update }));
});
