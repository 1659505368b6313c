//! The benchmark's subscribers: each its own mTLS connection and `Watch` stream, as a
//! sidecar's, with an SVID of one of a few identities from the real CA. Each acks every
//! update, and notes when the endpoint the main thread is waiting for reaches it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_api::client::{Dial, connect};
use airlock_api::proto::{Ack, MeshUpdate};
use airlock_ca::client::CaClient;
use airlock_identity::{BundleStore, PeerMatch, SpiffeId, SvidStore, TrustBundle, tls};
use airlock_testkit::{CONTROLLER_PATH, TestCa};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;

/// What the subscriber tasks share with the main thread.
#[derive(Default)]
struct Board {
    /// The mesh address of the endpoint a round waits for.
    expected: Mutex<String>,
    /// When each subscriber saw it, this round.
    arrivals: Mutex<Vec<Instant>>,
    /// Subscribers holding their first snapshot.
    synced: AtomicUsize,
    /// Updates received in all.
    updates: AtomicU64,
    changed: Notify,
}

/// The running subscribers.
pub(crate) struct Subscribers {
    board: Arc<Board>,
    count: usize,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Subscribers {
    /// Obtains an SVID for each of `identities` identities, then connects `count`
    /// subscribers to the controller at `url` (at most 64 handshakes at once) and waits
    /// until every one holds its snapshot.
    pub(crate) async fn start(
        ca: &TestCa,
        ca_url: &str,
        url: &str,
        count: usize,
        identities: usize,
    ) -> Self {
        let trust_domain = ca.trust_domain.parse().unwrap();
        let bundle = TrustBundle::load(trust_domain, &ca.path("bundle.pem")).unwrap();
        let bundle = BundleStore::new(bundle);
        let controller: SpiffeId = ca.id(CONTROLLER_PATH).parse().unwrap();
        let mut configs = Vec::new();
        for i in 0..identities {
            let id = crate::cluster::identity(i);
            let store = SvidStore::new(tls::provider());
            let client = CaClient::new(ca_url, bundle.clone(), store.clone()).unwrap();
            let token = ca.token(&id, &[]);
            let credentials = client.obtain_svid(Some(&token), None).await.unwrap();
            store.install(credentials.chain, credentials.key).unwrap();
            configs.push(Arc::new(tls::client_config(
                store,
                bundle.clone(),
                PeerMatch::Exactly(controller.clone()),
                &[b"h2"],
            )));
        }
        let (host, port) = url.trim_start_matches("https://").rsplit_once(':').unwrap();
        let board = Arc::new(Board::default());
        let handshakes = Arc::new(Semaphore::new(64));
        let tasks = (0..count)
            .map(|i| {
                let dial = Dial {
                    host: host.to_owned(),
                    port: port.parse().unwrap(),
                    tls: configs[i % identities].clone(),
                    timeout: Duration::from_secs(30),
                };
                tokio::spawn(subscribe(dial, board.clone(), handshakes.clone()))
            })
            .collect();
        let subscribers = Self {
            board,
            count,
            tasks,
        };
        subscribers
            .until(Duration::from_secs(300), |b| {
                b.synced.load(Ordering::Relaxed) >= count
            })
            .await;
        subscribers
    }

    /// Starts a round: from now on, arrivals of `address` (on the watched service) count.
    pub(crate) fn expect(&self, address: &str) {
        *self.board.expected.lock().unwrap() = address.to_owned();
        self.board.arrivals.lock().unwrap().clear();
    }

    /// Waits until every subscriber saw the expected endpoint (or `timeout`), and returns
    /// how long after `t0` each did.
    pub(crate) async fn wait_all(&self, t0: Instant, timeout: Duration) -> Vec<Duration> {
        let count = self.count;
        self.until(timeout, |b| b.arrivals.lock().unwrap().len() >= count)
            .await;
        self.board
            .arrivals
            .lock()
            .unwrap()
            .iter()
            .map(|at| at.saturating_duration_since(t0))
            .collect()
    }

    /// Updates received in all.
    pub(crate) fn updates(&self) -> u64 {
        self.board.updates.load(Ordering::Relaxed)
    }

    async fn until(&self, timeout: Duration, done: impl Fn(&Board) -> bool) {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a change between the two is not missed.
            let wake = self.board.changed.notified();
            tokio::pin!(wake);
            wake.as_mut().enable();
            if done(&self.board) {
                return;
            }
            if tokio::time::timeout_at(deadline, wake).await.is_err() {
                eprintln!("gave up waiting after {timeout:?}");
                return;
            }
        }
    }
}

impl Drop for Subscribers {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One subscriber, for as long as the benchmark runs.
async fn subscribe(dial: Dial, board: Arc<Board>, handshakes: Arc<Semaphore>) {
    // Held until the snapshot is in: the handshakes and first snapshots go in waves.
    let mut permit = Some(handshakes.acquire_owned().await.unwrap());
    let mut client = connect(&dial).await.unwrap();
    let (acks, stream) = mpsc::channel(4);
    acks.send(Ack::default()).await.unwrap();
    let mut updates = client
        .watch(ReceiverStream::new(stream))
        .await
        .unwrap()
        .into_inner();
    let mut synced = false;
    let mut seen = String::new();
    while let Ok(Some(update)) = updates.message().await {
        board.updates.fetch_add(1, Ordering::Relaxed);
        if !synced && !update.more {
            synced = true;
            permit.take();
            board.synced.fetch_add(1, Ordering::Relaxed);
            board.changed.notify_waiters();
        }
        let expected = board.expected.lock().unwrap().clone();
        if !expected.is_empty() && expected != seen && holds(&update, &expected) {
            seen = expected;
            board.arrivals.lock().unwrap().push(Instant::now());
            board.changed.notify_waiters();
        }
        if update.more {
            continue;
        }
        let ack = Ack {
            version: update.version,
            error: String::new(),
        };
        if acks.send(ack).await.is_err() {
            return;
        }
    }
}

/// Whether `update` carries the watched service with an endpoint at `address`.
fn holds(update: &MeshUpdate, address: &str) -> bool {
    update
        .services
        .iter()
        .filter(|s| s.name == crate::cluster::WATCHED)
        .any(|s| s.endpoints.iter().any(|e| e.address == address))
}
