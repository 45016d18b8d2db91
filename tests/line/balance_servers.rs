#![cfg(feature = "balance")]
//! A balanced client (`MakeReconnect::balance` and `balance_discover`) over
//! several real line-protocol servers on 127.0.0.1: endpoints that die and
//! return under load, endpoints that move to a new address, all endpoints
//! down, and endpoints that discovery adds and removes.
//!
//! Each server stores its own name under the key `who`, so every `GET who`
//! reply says which endpoint answered, and each server counts the commands it
//! executed.
//!
//! # Idempotent traffic
//!
//! When a server stops, the requests already written to its connection fail
//! with an io error: the server may have run them, so by default (at most
//! once) the client hands that error to the caller. The traffic here is
//! idempotent `GET`s, sent through a layer with
//! `resend_if(|r| r.starts_with("GET"))`, so such requests are re-sent to
//! another endpoint instead. (Requests the connection hands back as
//! `NotSent` are re-sent whatever the layer says.) That is what makes "no
//! request fails while any endpoint is up" the right target.
//!
//! # Time
//!
//! Real time throughout. Sleeps only pace the traffic and the outages; every
//! wait is for an event (a server's command count, an open-connection
//! count, the client's state watch) under a generous hang guard ([`within`]),
//! and nothing asserts how long anything took, except one lower bound (a
//! request that fails fast waited at least the wait limit), which a slow
//! machine can only make easier to meet. The tests run one at a time (see
//! [`ONE_AT_A_TIME`]).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::channel::mpsc;
use support::line::*;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tower::discover::Change;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::Unavailable;
use tower_redial::state::Phase;
use tower_redial::{
    Backoff, Client, Jitter, ReconnectLayer, ReconnectPolicy, ReconnectPolicyBuilder,
};

type LineClient = Client<String, String>;

/// The tests here run one at a time. A stopped server frees its port, and
/// its endpoint keeps redialing it; a server that another test started
/// meanwhile could be given that port, and would then answer the stopped
/// server's endpoint.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Concurrent callers in the traffic tests.
const TASKS: usize = 32;

/// How long an event may take before the test declares a hang. Far above
/// anything a working test needs; not a timing assertion.
const HANG_GUARD: Duration = Duration::from_secs(30);

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Redial at once, then after 20, 40, 80, 160, 200, 200... ms; no jitter.
fn policy_builder(wait_limit: Duration) -> ReconnectPolicyBuilder {
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(20), 2.0, ms(200)).jitter(Jitter::None))
        .connect_timeout(Duration::from_secs(5))
        .wait_limit(wait_limit)
        .seed(5)
}

/// The layer every test uses: idempotent `GET`s may be re-sent.
fn layer(
    policy: ReconnectPolicy,
) -> ReconnectLayer<impl tower_redial::retry::ResendPolicy<String>> {
    ReconnectLayer::new(policy).resend_if(|request: &String| request.starts_with("GET"))
}

/// A client balanced over the servers at `addrs`.
fn balanced(policy: ReconnectPolicy, addrs: Vec<SocketAddr>) -> LineClient {
    let make = Handshake::new(TcpConnector::new(), LineConnection::handshake);
    ServiceBuilder::new()
        .layer(layer(policy))
        .service(make)
        .balance(addrs)
}

/// A server whose `GET who` answers `VALUE <name>`.
async fn named_server(name: &str) -> LineServer {
    let server = LineServer::start().await;
    server.store().set("who", name);
    server
}

/// A named server on a port other than `not`'s (an ephemeral port may be
/// handed out again right after it was closed).
async fn named_server_not_on(name: &str, not: SocketAddr) -> LineServer {
    loop {
        let server = named_server(name).await;
        if server.addr() != not {
            return server;
        }
    }
}

/// Awaits `future`, panicking with `what` if it has not finished within
/// [`HANG_GUARD`].
async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(output) => output,
        Err(_) => panic!("hung for {HANG_GUARD:?}: {what}"),
    }
}

/// Waits (under the hang guard) until `done` holds, checking every 5 ms.
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(ms(5)).await;
        }
    })
    .await;
}

/// Waits until `server` has executed `more` commands past `from`.
async fn serves(server: &LineServer, name: &str, from: u64, more: u64) {
    within(
        &format!("server {name} to execute {more} more commands (from {from})"),
        server.wait_for_commands(from + more),
    )
    .await;
}

/// Sends `GET who` through a clone of `client`.
async fn get_who(client: &LineClient) -> Result<String, BoxError> {
    client.clone().oneshot("GET who".to_string()).await
}

/// A short description of a failed request: its error and io error kind.
fn describe(error: &BoxError) -> String {
    match io_kind(&**error) {
        Some(kind) => format!("{error} (io: {kind:?})"),
        None => error.to_string(),
    }
}

// ---------------------------------------------------------------------------
// Steady traffic
// ---------------------------------------------------------------------------

/// What the traffic tasks saw.
#[derive(Debug, Default)]
struct Tally {
    /// Replies, by the server that answered (the `VALUE` of `GET who`).
    by_server: BTreeMap<String, u64>,
    /// Every request that did not get a `VALUE` reply, described.
    failures: Vec<String>,
}

impl Tally {
    fn ok(&self) -> u64 {
        self.by_server.values().sum()
    }

    fn merge(&mut self, other: Tally) {
        for (server, n) in other.by_server {
            *self.by_server.entry(server).or_default() += n;
        }
        self.failures.extend(other.failures);
    }
}

/// `tasks` tasks, each sending `GET who` through its own clone of the client
/// in a loop, with a 1 ms pause between requests.
struct Traffic {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Tally>,
}

impl Traffic {
    fn start(client: &LineClient, tasks: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut set = JoinSet::new();
        for _ in 0..tasks {
            let client = client.clone();
            let stop = stop.clone();
            set.spawn(async move {
                let mut tally = Tally::default();
                while !stop.load(Ordering::Relaxed) {
                    match get_who(&client).await {
                        Ok(reply) => match reply.strip_prefix("VALUE ") {
                            Some(who) => *tally.by_server.entry(who.to_string()).or_default() += 1,
                            None => tally.failures.push(format!("unexpected reply {reply:?}")),
                        },
                        Err(error) => tally.failures.push(describe(&error)),
                    }
                    tokio::time::sleep(ms(1)).await;
                }
                tally
            });
        }
        Self { stop, tasks: set }
    }

    /// Stops the tasks, waits for their last replies, and adds up.
    async fn finish(mut self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Tally::default();
        within("traffic tasks to finish", async {
            while let Some(tally) = self.tasks.join_next().await {
                total.merge(tally.expect("traffic task panicked"));
            }
        })
        .await;
        total
    }
}

// ---------------------------------------------------------------------------
// A resolver we control
// ---------------------------------------------------------------------------

/// A target that names an endpoint, resolved afresh at each dial: a stand-in
/// for a DNS name, with its answer set by the test.
#[derive(Clone)]
struct Name {
    name: &'static str,
    addr: Arc<Mutex<SocketAddr>>,
    lookups: Arc<AtomicU64>,
}

impl Name {
    fn new(name: &'static str, addr: SocketAddr) -> Self {
        Self {
            name,
            addr: Arc::new(Mutex::new(addr)),
            lookups: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The current address, counted as one lookup.
    fn resolve(&self) -> SocketAddr {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        *self.addr.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From now on the name resolves to `addr`.
    fn point_to(&self, addr: SocketAddr) {
        *self.addr.lock().unwrap_or_else(PoisonError::into_inner) = addr;
    }

    fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.test", self.name)
    }
}

/// A connection factory for [`Name`]s: the crate's `TcpConnector`, fed the
/// name's current address at each dial, then the line protocol's handshake.
fn resolving_make(
) -> impl Service<Name, Response = LineConnection, Error = BoxError, Future: Send + 'static>
       + Clone
       + Send
       + 'static {
    Handshake::new(
        TcpConnector::new().map_request(|name: Name| name.resolve()),
        LineConnection::handshake,
    )
}

// ---------------------------------------------------------------------------
// Endpoints that die and return
// ---------------------------------------------------------------------------

/// Issue 5.2: under steady traffic from 32 tasks, one endpoint is stopped,
/// then a second, then both are restarted. No request fails at any point
/// (one endpoint is always up; the `GET`s are idempotent, see the module
/// docs), no request fails fast, the stopped servers run nothing while down
/// although their endpoints keep redialing (the balancer does not pick an
/// endpoint while it redials), and both restarted servers get traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn endpoints_die_and_return_under_load_without_a_failure() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (a, b, c) = (
        named_server("a").await,
        named_server("b").await,
        named_server("c").await,
    );
    let policy = policy_builder(Duration::from_secs(5)).build().unwrap();
    let client = balanced(policy, vec![a.addr(), b.addr(), c.addr()]);
    let traffic = Traffic::start(&client, TASKS);

    // All up: every endpoint gets traffic.
    for (server, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        serves(server, name, 0, 50).await;
    }

    // a down: b and c carry the load.
    a.stop().await;
    let a_at_stop = a.commands();
    let failures_before = client.stats().dial_failures;
    serves(&b, "b", b.commands(), 200).await;
    serves(&c, "c", c.commands(), 200).await;
    until("a's endpoint to fail a redial", || {
        client.stats().dial_failures > failures_before
    })
    .await;

    // a and b down: c carries it all.
    b.stop().await;
    let b_at_stop = b.commands();
    let failures_before = client.stats().dial_failures;
    serves(&c, "c", c.commands(), 300).await;
    until("the down endpoints to fail more redials", || {
        client.stats().dial_failures >= failures_before + 2
    })
    .await;
    assert_eq!(a.commands(), a_at_stop, "a ran nothing while down");
    assert_eq!(b.commands(), b_at_stop, "b ran nothing while down");

    // All back: both restarted endpoints get traffic again.
    a.restart().await;
    b.restart().await;
    serves(&a, "a", a_at_stop, 50).await;
    serves(&b, "b", b_at_stop, 50).await;
    serves(&c, "c", c.commands(), 50).await;

    let tally = traffic.finish().await;
    let stats = client.stats();
    assert!(
        tally.failures.is_empty(),
        "{} of {} requests failed while an endpoint was up: {:?}",
        tally.failures.len(),
        tally.ok() + tally.failures.len() as u64,
        &tally.failures[..tally.failures.len().min(10)]
    );
    assert_eq!(stats.fail_fast, 0, "no request failed fast: {stats:?}");
    assert_eq!(
        tally.by_server.keys().collect::<Vec<_>>(),
        ["a", "b", "c"],
        "replies came from every server: {:?}",
        tally.by_server
    );
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

// ---------------------------------------------------------------------------
// Endpoints that move
// ---------------------------------------------------------------------------

/// Issue 5.3, promise 9, for a single client: the target is resolved afresh
/// at each dial. Its server stops, a new one starts on a different port and
/// the name is pointed there; the next dial follows, and the request that was
/// waiting meanwhile is answered by the new server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_client_follows_a_target_that_moves_to_a_new_port() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let old = named_server("old").await;
    let name = Name::new("db", old.addr());
    let policy = policy_builder(Duration::from_secs(10)).build().unwrap();
    let client: LineClient = ServiceBuilder::new()
        .layer(layer(policy))
        .service(resolving_make())
        .client(name.clone());

    assert_eq!(get_who(&client).await.unwrap(), "VALUE old");
    assert_eq!(name.lookups(), 1, "the first dial resolved the name");

    old.stop().await;
    let new = named_server_not_on("new", old.addr()).await;
    // A request sent while the name still points at the stopped server: it
    // waits while the client redials (and is refused).
    let waiting = tokio::spawn({
        let client = client.clone();
        async move { get_who(&client).await }
    });
    until("a refused redial", || client.stats().dial_failures >= 1).await;
    name.point_to(new.addr());

    let reply = within("the waiting request", waiting).await.unwrap();
    assert_eq!(reply.unwrap(), "VALUE new");
    for _ in 0..20 {
        assert_eq!(get_who(&client).await.unwrap(), "VALUE new");
    }
    let stats = client.stats();
    assert_eq!(
        name.lookups(),
        stats.dials,
        "every dial resolved the name afresh: {stats:?}"
    );
    assert_eq!(new.commands(), 21);
    assert_eq!(stats.fail_fast, 0);
}

/// Issue 5.3, promise 9, for a balanced client: one of two named endpoints
/// moves to a new server on a different port under steady traffic. Its
/// endpoint redials, follows the name, and the new server gets traffic; no
/// request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn balanced_client_follows_an_endpoint_that_moves_to_a_new_port() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (a, b) = (named_server("a").await, named_server("b").await);
    let (name_a, name_b) = (Name::new("a", a.addr()), Name::new("b", b.addr()));
    let policy = policy_builder(Duration::from_secs(5)).build().unwrap();
    let client: LineClient = ServiceBuilder::new()
        .layer(layer(policy))
        .service(resolving_make())
        .balance([name_a.clone(), name_b.clone()]);
    let traffic = Traffic::start(&client, TASKS / 2);
    serves(&a, "a", 0, 50).await;
    serves(&b, "b", 0, 50).await;

    a.stop().await;
    let a_at_stop = a.commands();
    let moved = named_server_not_on("a-moved", a.addr()).await;
    name_a.point_to(moved.addr());
    serves(&moved, "a-moved", 0, 100).await;
    serves(&b, "b", b.commands(), 50).await;

    let tally = traffic.finish().await;
    assert!(
        tally.failures.is_empty(),
        "requests failed: {:?}",
        &tally.failures[..tally.failures.len().min(10)]
    );
    assert_eq!(a.commands(), a_at_stop, "the old address got nothing more");
    assert!(tally.by_server.get("a-moved").is_some_and(|&n| n >= 100));
    assert!(name_a.lookups() >= 2, "a's name was resolved again");
    assert_eq!(client.stats().fail_fast, 0);
}

// ---------------------------------------------------------------------------
// All endpoints down
// ---------------------------------------------------------------------------

/// Issue 5.4: with every server stopped, requests wait for the wait limit
/// (1 s), then fail fast with the typed `Unavailable` (no single dial to
/// blame: `attempts()` 0, no `source()`), and the client's state says
/// `FailFast`. Once one server returns, requests succeed again.
///
/// Requests sent just after the stop may still find a connection the client
/// has not yet seen close; such a send fails with an io error and marks that
/// endpoint dead. The policy allows 4 sends, one more than there are
/// endpoints, so every request ends in the wait and `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_endpoints_down_fail_fast_with_unavailable_then_recover() {
    let _serial = ONE_AT_A_TIME.lock().await;
    const WAIT_LIMIT: Duration = Duration::from_secs(1);
    let servers = [
        named_server("a").await,
        named_server("b").await,
        named_server("c").await,
    ];
    let policy = policy_builder(WAIT_LIMIT)
        .retry_attempts(4)
        .build()
        .unwrap();
    let client = balanced(policy, servers.iter().map(LineServer::addr).collect());
    for _ in 0..30 {
        assert!(get_who(&client).await.unwrap().starts_with("VALUE "));
    }

    for server in &servers {
        server.stop().await;
    }
    let start = Instant::now();
    let waiting: Vec<_> = (0..8)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { (get_who(&client).await, Instant::now()) })
        })
        .collect();
    for request in waiting {
        let (result, at) = within("a request to fail fast", request).await.unwrap();
        let error = result.expect_err("no server is up");
        let unavailable = error
            .downcast_ref::<Unavailable>()
            .unwrap_or_else(|| panic!("expected Unavailable, got {}", describe(&error)));
        assert_eq!(unavailable.attempts(), 0);
        assert!(std::error::Error::source(unavailable).is_none());
        assert!(
            at - start >= WAIT_LIMIT,
            "waited {:?}, less than the wait limit",
            at - start
        );
    }
    assert_eq!(client.state().borrow().phase(), Phase::FailFast);
    // New requests fail fast too.
    for _ in 0..5 {
        let error = get_who(&client).await.unwrap_err();
        assert!(error.is::<Unavailable>(), "{}", describe(&error));
    }
    assert!(client.stats().fail_fast >= 13, "{:?}", client.stats());

    // b returns: once its endpoint has redialed, requests succeed again.
    let b = &servers[1];
    b.restart().await;
    within("a request to succeed again", async {
        loop {
            match get_who(&client).await {
                Ok(reply) => break assert_eq!(reply, "VALUE b"),
                Err(error) => assert!(error.is::<Unavailable>(), "{}", describe(&error)),
            }
            tokio::time::sleep(ms(5)).await;
        }
    })
    .await;
    for _ in 0..50 {
        assert_eq!(get_who(&client).await.unwrap(), "VALUE b");
    }
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

/// Issue 5.4: requests issued while every server is down wait in the queue
/// (the client's state goes `Connecting`); when one server returns well
/// within the wait limit (here 10 s), every one of them succeeds and none
/// fails fast. (4 sends allowed, as in the test above.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_waiting_while_all_are_down_succeed_when_one_returns() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let servers = [
        named_server("a").await,
        named_server("b").await,
        named_server("c").await,
    ];
    let policy = policy_builder(Duration::from_secs(10))
        .retry_attempts(4)
        .build()
        .unwrap();
    let client = balanced(policy, servers.iter().map(LineServer::addr).collect());
    for _ in 0..30 {
        assert!(get_who(&client).await.unwrap().starts_with("VALUE "));
    }

    for server in &servers {
        server.stop().await;
    }
    let waiting: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { get_who(&client).await })
        })
        .collect();
    let mut state = client.state();
    within(
        "the client to see every endpoint down",
        state.wait_for(|s| s.phase() == Phase::Connecting),
    )
    .await
    .unwrap();
    tokio::time::sleep(ms(300)).await;
    assert!(
        waiting.iter().all(|request| !request.is_finished()),
        "the requests wait while no server is up"
    );

    let c = &servers[2];
    c.restart().await;
    for request in waiting {
        let reply = within("a waiting request", request).await.unwrap();
        assert_eq!(reply.unwrap(), "VALUE c");
    }
    assert_eq!(client.stats().fail_fast, 0);
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

// ---------------------------------------------------------------------------
// Discovery
// ---------------------------------------------------------------------------

/// `balance_discover` over a channel of changes, under steady traffic:
/// three inserted endpoints all get traffic; a removed one has its
/// connection closed and runs nothing more; a new key joins and gets
/// traffic; and a key inserted again with a new server's address moves
/// there (the old server's connection closes once the new one is ready).
/// No request fails at any point.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn discovered_endpoints_join_leave_and_move() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let (a, b, c) = (
        named_server("a").await,
        named_server("b").await,
        named_server("c").await,
    );
    let (changes, targets) =
        mpsc::unbounded::<Result<Change<&'static str, SocketAddr>, Infallible>>();
    let insert = |key, addr| {
        changes
            .unbounded_send(Ok(Change::Insert(key, addr)))
            .unwrap()
    };
    insert("a", a.addr());
    insert("b", b.addr());
    insert("c", c.addr());

    let policy = policy_builder(Duration::from_secs(5)).build().unwrap();
    let make = Handshake::new(TcpConnector::new(), LineConnection::handshake);
    let client: LineClient = ServiceBuilder::new()
        .layer(layer(policy))
        .service(make)
        .balance_discover(targets);
    let traffic = Traffic::start(&client, TASKS / 2);
    for (server, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        serves(server, name, 0, 50).await;
    }

    // Remove b: its connection is closed and it runs nothing more.
    changes.unbounded_send(Ok(Change::Remove("b"))).unwrap();
    within("b's connection to close", b.wait_for_open_connections(0)).await;
    let b_after_removal = b.commands();
    serves(&a, "a", a.commands(), 200).await;
    serves(&c, "c", c.commands(), 200).await;
    assert_eq!(
        b.commands(),
        b_after_removal,
        "a removed endpoint gets no traffic"
    );
    assert_eq!(b.accepted(), 1, "a removed endpoint is not redialed");

    // A new key joins.
    let d = named_server("d").await;
    insert("d", d.addr());
    serves(&d, "d", 0, 50).await;

    // Key "c" moves to a new server.
    let c2 = named_server("c2").await;
    insert("c", c2.addr());
    serves(&c2, "c2", 0, 50).await;
    within(
        "c's old connection to close",
        c.wait_for_open_connections(0),
    )
    .await;
    let c_after_move = c.commands();
    serves(&a, "a", a.commands(), 100).await;
    serves(&c2, "c2", c2.commands(), 100).await;
    assert_eq!(
        c.commands(),
        c_after_move,
        "the moved key's old server gets no traffic"
    );

    let tally = traffic.finish().await;
    assert!(
        tally.failures.is_empty(),
        "requests failed: {:?}",
        &tally.failures[..tally.failures.len().min(10)]
    );
    assert_eq!(b.commands(), b_after_removal);
    assert_eq!(client.stats().fail_fast, 0);
}
