//! End-to-end tests over real TCP: a `Client` built from `TcpConnector` and
//! `LineConnection::handshake`, against a `LineServer` on 127.0.0.1 that is
//! restarted, reset, stopped and made to misbehave while traffic runs.
//!
//! Real time throughout (the support module uses real sockets). Nothing here
//! asserts how long anything took: sleeps only pace outages, and every wait
//! is either an event (a server count, the client's state watch) or a hang
//! guard (`deadline`). The one bound on dials is derived from the backoff
//! schedule and the time measured, so a slow machine can only make fewer
//! dials than it allows, never more.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::line::*;
use support::outcome::{Outcome, Tally};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::connect::Handshake;
use tower_redial::connect::TcpConnector;
use tower_redial::error::Unavailable;
use tower_redial::state::Phase;
use tower_redial::{
    Backoff, BoxError, Client, Jitter, ReconnectLayer, ReconnectPolicy, ReconnectPolicyBuilder,
};

type LineClient = Client<String, String>;

/// Concurrent callers in the traffic tests.
const WORKERS: usize = 16;
/// Requests per caller in the disrupted-traffic tests.
const PER_WORKER: usize = 200;
/// Each caller pauses every `SEGMENT` requests until the next disruption has
/// begun, so that every disruption lands in the middle of the traffic.
const SEGMENT: usize = 50;
/// Disruptions per disrupted-traffic test: one between each two segments.
const DISRUPTIONS: usize = PER_WORKER / SEGMENT - 1;
/// Requests per caller after the last disruption; all must succeed.
const FINAL_ROUND: usize = 12;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// 20 ms, 40, 80, 160, then 200 ms between dials; no jitter.
fn backoff() -> Backoff {
    Backoff::exponential(ms(20), 2.0, ms(200)).jitter(Jitter::None)
}

fn policy_builder() -> ReconnectPolicyBuilder {
    ReconnectPolicy::builder()
        .backoff(backoff())
        .wait_limit(Duration::from_secs(5))
        .seed(1)
}

fn policy() -> ReconnectPolicy {
    policy_builder().build().expect("valid policy")
}

/// A client of the line server at `addr`, dialed lazily.
fn client_for(addr: SocketAddr, policy: ReconnectPolicy) -> LineClient {
    let make = Handshake::new(TcpConnector::new(), LineConnection::handshake);
    ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(make)
        .client(addr)
}

/// Sends one request line through a clone of `client`.
async fn send(client: &LineClient, line: impl Into<String>) -> Result<String, BoxError> {
    client.clone().oneshot(line.into()).await
}

/// Sends one request line from a task of its own.
fn spawn_send(
    client: &LineClient,
    line: impl Into<String>,
) -> JoinHandle<Result<String, BoxError>> {
    tokio::spawn(client.clone().oneshot(line.into()))
}

// ---------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// A caller that checks every reply
// ---------------------------------------------------------------------------

/// A sequential caller sending `SET s<id> v<i>`, `GET s<id>` and
/// `INCR k<id>` in turn, on keys no other caller touches, checking each
/// reply against what it can know of the server's data:
///
/// - a `GET` sees the last acknowledged `SET`, or one of the ambiguous ones
///   issued after it;
/// - an `INCR` acknowledged with `INT n` proves the key's executions so far
///   are exactly `n`, which must be one more than the last acknowledged
///   value plus at most the ambiguous `INCR`s since: no `INCR` ran twice,
///   and none that failed unsent (or fast) ran at all.
struct MixedWorker {
    id: usize,
    next: u64,
    last_set: Option<u64>,
    maybe_set: Vec<u64>,
    /// Executions of `k<id>` known from the last acknowledged `INCR`.
    incr_known: i64,
    /// Ambiguous `INCR`s since then.
    incr_maybe: i64,
    incr_ok: u64,
    incr_ambiguous: u64,
    tally: Tally,
    violations: Vec<String>,
}

impl MixedWorker {
    fn new(id: usize) -> Self {
        Self {
            id,
            next: 0,
            last_set: None,
            maybe_set: Vec::new(),
            incr_known: 0,
            incr_maybe: 0,
            incr_ok: 0,
            incr_ambiguous: 0,
            tally: Tally::default(),
            violations: Vec::new(),
        }
    }

    fn counter_key(&self) -> String {
        format!("k{}", self.id)
    }

    fn violation(&mut self, what: String) {
        if self.violations.len() < 10 {
            self.violations.push(format!("worker {}: {what}", self.id));
        }
    }

    async fn step(&mut self, client: &LineClient) -> Outcome {
        let i = self.next;
        self.next += 1;
        let id = self.id;
        match i % 3 {
            0 => {
                let result = send(client, format!("SET s{id} v{i}")).await;
                let outcome = self.tally.record(&result);
                match (&result, outcome) {
                    (Ok(reply), _) if reply == "OK" => {
                        self.last_set = Some(i);
                        self.maybe_set.clear();
                    }
                    (Ok(reply), _) => self.violation(format!("SET {i} -> {reply:?}")),
                    (_, Outcome::Ambiguous) => self.maybe_set.push(i),
                    _ => {}
                }
                outcome
            }
            1 => {
                let result = send(client, format!("GET s{id}")).await;
                let outcome = self.tally.record(&result);
                if let Ok(reply) = &result {
                    let seen = if reply == "NIL" {
                        Ok(None)
                    } else {
                        reply
                            .strip_prefix("VALUE v")
                            .and_then(|v| v.parse::<u64>().ok())
                            .map(Some)
                            .ok_or(())
                    };
                    match seen {
                        Ok(seen)
                            if seen == self.last_set
                                || seen.is_some_and(|j| self.maybe_set.contains(&j)) =>
                        {
                            self.last_set = seen;
                            self.maybe_set.clear();
                        }
                        _ => {
                            let msg = format!(
                                "GET -> {reply:?}, expected v{:?} or one of {:?}",
                                self.last_set, self.maybe_set
                            );
                            self.violation(msg);
                        }
                    }
                }
                outcome
            }
            _ => {
                let result = send(client, format!("INCR k{id}")).await;
                let outcome = self.tally.record(&result);
                match (&result, outcome) {
                    (Ok(reply), _) => {
                        self.incr_ok += 1;
                        let n = reply
                            .strip_prefix("INT ")
                            .and_then(|n| n.parse::<i64>().ok());
                        let (low, high) =
                            (self.incr_known + 1, self.incr_known + self.incr_maybe + 1);
                        match n {
                            Some(n) if (low..=high).contains(&n) => {
                                self.incr_known = n;
                                self.incr_maybe = 0;
                            }
                            _ => self
                                .violation(format!("INCR -> {reply:?}, expected {low}..={high}")),
                        }
                    }
                    (_, Outcome::Ambiguous) => {
                        self.incr_ambiguous += 1;
                        self.incr_maybe += 1;
                    }
                    _ => {}
                }
                outcome
            }
        }
    }

    /// The server's counter must lie between what the acknowledgements
    /// prove and that plus the ambiguous `INCR`s since.
    fn check_counter(&mut self, server: &LineServer) {
        let count = server.counter(&self.counter_key());
        let (low, high) = (self.incr_known, self.incr_known + self.incr_maybe);
        if !(low..=high).contains(&count) {
            self.violation(format!("server counter {count}, expected {low}..={high}"));
        }
    }
}

/// Server-side disruptions.
#[derive(Clone, Copy, Debug)]
enum Disruption {
    /// Stop (closing every connection) and listen again on the same port.
    Restart,
    /// Abort every open connection with an RST; the listener stays up.
    Reset,
}

/// `WORKERS` callers send `PER_WORKER` mixed requests each while the server
/// is disrupted `DISRUPTIONS` times, each one in the middle of a segment of
/// traffic; then the client must answer again, and a final round of
/// requests must all succeed.
async fn disrupted_traffic(disruption: Disruption) {
    let server = LineServer::start().await;
    let client = client_for(server.addr(), policy());

    let (begun, begun_rx) = watch::channel(0usize);
    let completed = Arc::new(watch::Sender::new(0usize));
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| {
            let client = client.clone();
            let mut begun = begun_rx.clone();
            let completed = completed.clone();
            tokio::spawn(async move {
                let mut worker = MixedWorker::new(id);
                for i in 0..PER_WORKER {
                    if i > 0 && i % SEGMENT == 0 {
                        // Wait for the disruption of this segment boundary
                        // to begin: it then overlaps the next segment.
                        let _ = begun.wait_for(|&k| k >= i / SEGMENT).await;
                    }
                    worker.step(&client).await;
                    completed.send_modify(|n| *n += 1);
                }
                worker
            })
        })
        .collect();

    let mut done = completed.subscribe();
    for k in 1..=DISRUPTIONS {
        // Half of the segment before this boundary has finished; the rest
        // runs on while the server is disrupted.
        let threshold = (k - 1) * SEGMENT * WORKERS + SEGMENT * WORKERS / 2;
        deadline(
            "traffic before a disruption",
            done.wait_for(|&n| n >= threshold),
        )
        .await
        .expect("the counter lives here");
        begun.send_replace(k);
        match disruption {
            Disruption::Restart => server.restart().await,
            Disruption::Reset => deadline("reset_all", server.reset_all()).await,
        }
    }

    let mut workers = deadline("disrupted traffic", futures::future::try_join_all(workers))
        .await
        .expect("no worker panicked");

    // The client answers again: at most the first request after the last
    // disruption can still be written to the connection it killed.
    let mut probes = Tally::default();
    loop {
        let result = deadline("probe", send(&client, "PING")).await;
        if probes.record(&result) == Outcome::Ok {
            assert_eq!(result.unwrap(), "PONG");
            break;
        }
        assert!(probes.issued < 3, "the client did not recover: {probes:?}");
    }
    probes.assert_rode_through();

    // A final round, on the connection that answered: every request succeeds.
    let round: Vec<_> = workers
        .drain(..)
        .map(|mut worker| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut failures = Vec::new();
                for _ in 0..FINAL_ROUND {
                    let outcome = worker.step(&client).await;
                    if outcome != Outcome::Ok {
                        failures.push(outcome);
                    }
                }
                (worker, failures)
            })
        })
        .collect();
    let round = deadline("final round", futures::future::try_join_all(round))
        .await
        .expect("no worker panicked");

    let mut tally = Tally::default();
    let mut violations = Vec::new();
    let (mut incr_ok, mut incr_ambiguous) = (0, 0);
    for (mut worker, failures) in round {
        assert!(
            failures.is_empty(),
            "worker {}: requests failed after the client recovered: {failures:?}",
            worker.id
        );
        worker.check_counter(&server);
        tally.add(&worker.tally);
        violations.append(&mut worker.violations);
        incr_ok += worker.incr_ok;
        incr_ambiguous += worker.incr_ambiguous;
    }
    assert!(violations.is_empty(), "{violations:#?}");
    assert_eq!(
        tally.issued,
        (WORKERS * (PER_WORKER + FINAL_ROUND)) as u64,
        "every request was issued and ended once"
    );
    tally.assert_rode_through();

    let stats = client.stats();
    assert!(
        stats.drops >= 1,
        "the client saw its connection die: {stats:?}"
    );
    assert!(stats.dials >= 2, "the client redialed: {stats:?}");
    assert_eq!(stats.fail_fast, 0, "{stats:?}");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
    println!(
        "{disruption:?} x{DISRUPTIONS}: {tally:?}; INCR ok {incr_ok}, ambiguous {incr_ambiguous}; \
         probes {probes:?}; {stats:?}"
    );
}

/// Makes the client notice that its server went away, so that no later
/// request can be written to the dead connection: sends `PING` probes, one
/// at a time, until the client has left `Ready`.
///
/// A probe written to the dead connection fails (ambiguously) and marks it
/// dead; the next probe then makes the client drop it. The client leaves
/// `Ready` only in a `poll_ready` for a queued request, and with one probe
/// outstanding that is the probe's own: then the probe was not written, and
/// it waits for the server. That probe is returned.
async fn notice_outage(client: &LineClient) -> Option<JoinHandle<Result<String, BoxError>>> {
    let mut state = client.state();
    loop {
        if state.borrow_and_update().phase() != Phase::Ready {
            return None;
        }
        let mut probe = spawn_send(client, "PING");
        let waiting = deadline("the client to notice the outage", async {
            loop {
                tokio::select! {
                    changed = state.changed() => {
                        changed.expect("the client is alive");
                        // A change within Ready (such as the connection
                        // proving healthy) is not the outage.
                        if state.borrow_and_update().phase() != Phase::Ready {
                            return true;
                        }
                    }
                    result = &mut probe => {
                        let result = result.expect("probe task");
                        assert_eq!(
                            Outcome::of(&result),
                            Outcome::Ambiguous,
                            "a probe can only fail on the dead connection: {result:?}"
                        );
                        return false;
                    }
                }
            }
        })
        .await;
        if waiting {
            return Some(probe);
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// Restarting the server on the same port three times under traffic from 16
/// callers: every request ends exactly once, only ambiguously or unsent when
/// it fails (never `Unavailable` or `Closed`: each outage is far below the
/// wait limit), replies stay matched to their requests, no `INCR` runs twice,
/// and requests succeed again after the last restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_on_same_port_during_traffic() {
    disrupted_traffic(Disruption::Restart).await;
}

/// Resetting every connection (RST) three times under traffic: the client
/// redials, failures are only transport errors (ambiguous) or unsent
/// requests, and requests succeed again afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_resets_connections() {
    disrupted_traffic(Disruption::Reset).await;
}

/// While the server refuses connections for a second, requests issued in
/// the outage wait in the queue (none fails) and all succeed once it is back
/// on the same port; the refused dials are counted.
#[tokio::test]
async fn server_refuses_for_one_second_then_returns() {
    let server = LineServer::start().await;
    let client = client_for(server.addr(), policy());
    assert_eq!(send(&client, "SET k before").await.unwrap(), "OK");

    server.stop().await;
    let probe = notice_outage(&client).await;
    let mut state = client.state();
    let outage: Vec<_> = (0..WORKERS)
        .map(|i| match i % 2 {
            0 => spawn_send(&client, "INCR n"),
            _ => spawn_send(&client, "GET k"),
        })
        .collect();
    deadline(
        "a refused dial",
        state.wait_for(|s| s.last_error().is_some()),
    )
    .await
    .expect("the client is alive");
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert!(
        outage.iter().all(|request| !request.is_finished()),
        "requests issued during the outage wait; none fails"
    );
    let phase = client.state().borrow().phase();
    assert!(
        matches!(phase, Phase::Connecting | Phase::Backoff),
        "{phase:?}"
    );
    let stats = client.stats();
    assert!(stats.dial_failures >= 1, "dials were refused: {stats:?}");
    assert_eq!(stats.fail_fast, 0, "{stats:?}");

    server.restart().await;
    let mut ints = Vec::new();
    for (i, request) in outage.into_iter().enumerate() {
        let reply = deadline("outage request", request)
            .await
            .expect("request task")
            .unwrap_or_else(|e| panic!("request {i} issued during the outage failed: {e:?}"));
        match i % 2 {
            0 => ints.push(reply),
            _ => assert_eq!(reply, "VALUE before"),
        }
    }
    if let Some(probe) = probe {
        let result = deadline("probe", probe).await.expect("probe task");
        assert_eq!(result.unwrap(), "PONG", "the waiting probe succeeds too");
    }
    // Each INCR ran exactly once.
    ints.sort_by_key(|reply| reply[4..].parse::<i64>().unwrap());
    let expected: Vec<_> = (1..=WORKERS / 2).map(|n| format!("INT {n}")).collect();
    assert_eq!(ints, expected);
    assert_eq!(server.counter("n"), (WORKERS / 2) as i64);
    assert_eq!(client.stats().fail_fast, 0);
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

/// A brand-new client whose server is down from the start queues its
/// requests while its dials are refused, then gets every one answered once
/// the server starts on that port.
#[tokio::test]
async fn new_client_waits_for_a_server_that_is_not_up_yet() {
    let server = LineServer::start().await;
    server.stop().await;
    let client = client_for(server.addr(), policy());
    let mut state = client.state();

    let requests: Vec<_> = (0..8).map(|_| spawn_send(&client, "INCR c")).collect();
    // Two dials refused, a third begun.
    deadline("refused dials", state.wait_for(|s| s.attempt() >= 3))
        .await
        .expect("the client is alive");
    assert!(requests.iter().all(|r| !r.is_finished()), "requests wait");
    let stats = client.stats();
    assert!(stats.dial_failures >= 2, "{stats:?}");
    assert_eq!(server.accepted(), 0);

    server.restart().await;
    let mut values = Vec::new();
    for request in requests {
        let reply = deadline("queued request", request)
            .await
            .expect("request task")
            .expect("a queued request succeeds once the server is up");
        values.push(reply[4..].parse::<i64>().unwrap());
    }
    values.sort_unstable();
    assert_eq!(values, (1..=8).collect::<Vec<i64>>());
    assert_eq!(server.counter("c"), 8);
    assert_eq!(client.stats().fail_fast, 0);
}

/// An outage longer than the wait limit (300 ms here) fails the queued
/// `INCR`s fast with `Unavailable`, whose source is the refused dial; none of
/// them ever runs, not even once the server is back, and requests succeed
/// again once a dial does.
#[tokio::test]
async fn outage_past_the_wait_limit_fails_fast_then_recovers() {
    let server = LineServer::start().await;
    server.stop().await;
    let policy = policy_builder().wait_limit(ms(300)).build().unwrap();
    let client = client_for(server.addr(), policy);

    let queued: Vec<_> = (0..4).map(|_| spawn_send(&client, "INCR ff")).collect();
    for request in queued {
        let error = deadline("a queued request to fail fast", request)
            .await
            .expect("request task")
            .expect_err("the server is down");
        let unavailable = error
            .downcast_ref::<Unavailable>()
            .unwrap_or_else(|| panic!("expected Unavailable, got {error:?}"));
        assert!(unavailable.down_for() >= ms(300), "{unavailable:?}");
        let source = std::error::Error::source(unavailable).expect("the last dial error");
        assert_eq!(io_kind(source), Some(io::ErrorKind::ConnectionRefused));
    }
    assert_eq!(client.state().borrow().phase(), Phase::FailFast);
    let stats = client.stats();
    assert_eq!(stats.fail_fast, 4, "{stats:?}");
    assert_eq!(stats.retries, 0, "failing fast is the answer, not re-sent");

    // Back up: requests fail fast until the next dial succeeds, then flow.
    // (Paced, so that failing fast does not make this loop spin.)
    server.restart().await;
    let mut tally = Tally::default();
    deadline("a request to succeed after the restart", async {
        loop {
            let result = send(&client, "INCR ff").await;
            match tally.record(&result) {
                Outcome::Ok => break,
                Outcome::Unavailable => tokio::time::sleep(ms(10)).await,
                other => panic!("{other:?}: {result:?}"),
            }
        }
    })
    .await;
    assert_eq!(send(&client, "GET ff").await.unwrap(), "VALUE 1");
    assert_eq!(server.incr_executions(), 1, "no failed-fast INCR ran");
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

/// The books reconcile after a one-second outage under 16 callers of the
/// non-idempotent `INCR`: every request issued while the server was down
/// succeeds after the restart, and the server's count lies between the
/// acknowledged increments S and S + A (A: ambiguous failures), so nothing
/// acknowledged was lost and nothing ran twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn books_reconcile_after_outage() {
    let server = LineServer::start().await;
    let client = client_for(server.addr(), policy());
    let down = Arc::new(AtomicBool::new(false));
    let finish = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(watch::Sender::new(0usize));

    // Each caller returns its tally and its failures among the requests it
    // issued while the server was down.
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (client, down, finish) = (client.clone(), down.clone(), finish.clone());
            let completed = completed.clone();
            tokio::spawn(async move {
                let mut tally = Tally::default();
                let mut issued_down = 0u64;
                let mut down_failures = Vec::new();
                while !finish.load(Ordering::SeqCst) {
                    let while_down = down.load(Ordering::SeqCst);
                    let result = send(&client, "INCR counter").await;
                    if tally.record(&result) == Outcome::Ok {
                        let reply = result.as_ref().unwrap();
                        assert!(reply.starts_with("INT "), "{reply:?}");
                    } else if while_down {
                        down_failures.push(format!("{result:?}"));
                    }
                    issued_down += u64::from(while_down);
                    completed.send_modify(|n| *n += 1);
                }
                (tally, issued_down, down_failures)
            })
        })
        .collect();

    let mut done = completed.subscribe();
    deadline("traffic before the outage", done.wait_for(|&n| n >= 300))
        .await
        .expect("the counter lives here");

    // The outage. Requests count as issued while down once the client has
    // noticed it (left Ready): from then on none can reach the old
    // connection, so each must wait for the restarted server.
    server.stop().await;
    let mut state = client.state();
    deadline(
        "the client to notice the outage",
        state.wait_for(|s| s.phase() != Phase::Ready),
    )
    .await
    .expect("the client is alive");
    down.store(true, Ordering::SeqCst);
    let outage: Vec<_> = (0..WORKERS)
        .map(|_| spawn_send(&client, "INCR counter"))
        .collect();
    deadline(
        "a refused dial",
        state.wait_for(|s| s.last_error().is_some()),
    )
    .await
    .expect("the client is alive");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        outage.iter().all(|r| !r.is_finished()),
        "requests issued during the outage wait in the queue"
    );
    assert!(client.stats().dial_failures >= 1);
    down.store(false, Ordering::SeqCst);
    server.restart().await;

    let after_restart = *completed.borrow();
    deadline(
        "traffic after the restart",
        done.wait_for(|&n| n >= after_restart + 300),
    )
    .await
    .expect("the counter lives here");
    finish.store(true, Ordering::SeqCst);

    let mut tally = Tally::default();
    let mut issued_down = 0;
    let mut down_failures = Vec::new();
    for (worker_tally, worker_down, mut failures) in
        deadline("callers", futures::future::try_join_all(workers))
            .await
            .expect("no caller panicked")
    {
        tally.add(&worker_tally);
        issued_down += worker_down;
        down_failures.append(&mut failures);
    }
    for request in outage {
        let result = deadline("outage request", request)
            .await
            .expect("request task");
        if tally.record(&result) != Outcome::Ok {
            down_failures.push(format!("{result:?}"));
        }
        issued_down += 1;
    }
    assert!(
        down_failures.is_empty(),
        "requests issued while the server was down must succeed: {down_failures:#?}"
    );
    tally.assert_rode_through();

    let stats = client.stats();
    let (s, a) = (tally.ok as i64, tally.ambiguous as i64);
    let count = server.counter("counter");
    println!(
        "reconcile: S={s} A={a} server={count} retries={} issued={} not_sent={} \
         issued_while_down={issued_down} dials={} dial_failures={} drops={}",
        stats.retries, tally.issued, tally.not_sent, stats.dials, stats.dial_failures, stats.drops
    );
    assert!(count >= s, "an acknowledged INCR was lost: {count} < S={s}");
    assert!(
        count <= s + a,
        "an INCR ran twice, or one that never reached the server ran: {count} > S+A={}",
        s + a
    );
    assert_eq!(server.incr_executions(), count as u64);
    assert!(issued_down >= WORKERS as u64);
    assert!(stats.drops >= 1, "{stats:?}");
    assert_eq!(stats.fail_fast, 0, "{stats:?}");
}

/// An `INCR` that the server executed but whose reply was lost when its
/// connection was reset is not re-sent by default: the caller gets the
/// transport error, and the server counted it exactly once.
#[tokio::test]
async fn executed_but_unanswered_incr_is_not_resent() {
    let server = LineServer::start().await;
    let client = client_for(server.addr(), policy());
    assert_eq!(send(&client, "PING").await.unwrap(), "PONG");

    server.set_hold_replies(true);
    let incr = spawn_send(&client, "INCR once");
    deadline("the INCR to run", server.wait_for_incr_executions(1)).await;
    deadline("reset_all", server.reset_all()).await;

    let result = deadline("the INCR to fail", incr)
        .await
        .expect("request task");
    assert_eq!(Outcome::of(&result), Outcome::Ambiguous, "{result:?}");
    let kind = io_kind(&*result.unwrap_err());
    assert!(
        matches!(
            kind,
            Some(io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof)
        ),
        "{kind:?}"
    );
    assert_eq!(client.stats().retries, 0, "not re-sent");

    server.set_hold_replies(false);
    assert_eq!(send(&client, "GET once").await.unwrap(), "VALUE 1");
    assert_eq!(server.counter("once"), 1);
    assert_eq!(server.incr_executions(), 1);
    let stats = client.stats();
    assert_eq!(
        (stats.dials, stats.drops, stats.retries),
        (2, 1, 0),
        "{stats:?}"
    );
}

/// The contrast: opting `INCR` in with `resend_if` re-sends the same
/// executed-but-unanswered `INCR` on the next connection, so the server runs
/// it twice while the caller sees one success. This is why the default is
/// at most once.
#[tokio::test]
async fn opted_in_resend_runs_an_unanswered_incr_twice() {
    let server = LineServer::start().await;
    let make = Handshake::new(TcpConnector::new(), LineConnection::handshake);
    let client: LineClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()).resend_if(|req: &String| req.starts_with("INCR")))
        .service(make)
        .client(server.addr());
    assert_eq!(send(&client, "PING").await.unwrap(), "PONG");

    server.set_hold_replies(true);
    let incr = spawn_send(&client, "INCR twice");
    deadline("the INCR to run", server.wait_for_incr_executions(1)).await;
    deadline("reset_all", server.reset_all()).await;
    // The copy runs on the next connection; its reply is held too.
    deadline(
        "the re-sent INCR to run",
        server.wait_for_incr_executions(2),
    )
    .await;
    server.set_hold_replies(false);

    let reply = deadline("the INCR", incr)
        .await
        .expect("request task")
        .expect("the re-send succeeds");
    assert_eq!(reply, "INT 2");
    assert_eq!(server.counter("twice"), 2);
    assert_eq!(client.stats().retries, 1);
}

/// A server that accepts each connection and closes it at once does not
/// make the client hot-loop: a connection that never proved healthy does
/// not reset the backoff, so over a second of steady requests the dials stay
/// within what the schedule (0, 20, 60, 140, 300, 500, 700, 900 ms, ...)
/// allows for the time that passed. Once the server behaves, requests
/// succeed again.
#[tokio::test]
async fn accept_then_close_does_not_hot_loop() {
    let server = LineServer::start().await;
    server.set_accept_then_close(true);
    // Only a response may prove a connection healthy here, not time alone.
    let policy = policy_builder()
        .healthy_after(Duration::from_secs(3600))
        .build()
        .unwrap();
    let start = Instant::now();
    let client = client_for(server.addr(), policy);
    let mut state = client.state();

    let finish = Arc::new(AtomicBool::new(false));
    let traffic = tokio::spawn({
        let (client, finish) = (client.clone(), finish.clone());
        async move {
            let mut tally = Tally::default();
            while !finish.load(Ordering::SeqCst) {
                tally.record(&send(&client, "PING").await);
            }
            tally
        }
    });

    // Never healthy, so the attempt count is the number of dials.
    deadline("three dials", state.wait_for(|s| s.attempt() >= 3))
        .await
        .expect("the client is alive");
    tokio::time::sleep_until(start + Duration::from_secs(1)).await;
    let accepted = server.accepted();
    let stats = client.stats();
    let elapsed = start.elapsed();
    let allowed = dials_allowed_within(elapsed);
    println!("accept-then-close: {stats:?}, accepted {accepted}, {elapsed:?} allows {allowed}");
    assert!(
        stats.dials <= allowed,
        "{} dials in {elapsed:?}; the backoff schedule allows {allowed}: {stats:?}",
        stats.dials
    );
    assert!(stats.dials >= 3);
    assert!(
        stats.drops + stats.dial_failures >= stats.dials - 1,
        "every connection but the last ended: {stats:?}"
    );
    assert!(accepted <= stats.dials);
    assert_eq!(stats.fail_fast, 0);

    finish.store(true, Ordering::SeqCst);
    let tally = deadline("the traffic loop", traffic)
        .await
        .expect("traffic task");
    tally.assert_rode_through();
    assert_eq!(tally.ok, 0, "no request can succeed on such a server");

    // The server behaves again: the client recovers.
    server.set_accept_then_close(false);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match deadline("a request after recovery", send(&client, "PING")).await {
            Ok(reply) => break assert_eq!(reply, "PONG"),
            Err(error) => assert!(attempts < 50, "never recovered: {error:?}"),
        }
    }
    assert_eq!(client.state().borrow().phase(), Phase::Ready);
}

/// The most dials the backoff schedule allows within `elapsed` of the first
/// request when no connection ever proves healthy: dial n waits for the sum
/// of the first n - 1 delays.
fn dials_allowed_within(elapsed: Duration) -> u64 {
    let (mut at, mut delay, mut dials) = (Duration::ZERO, ms(20), 0);
    while at <= elapsed {
        dials += 1;
        at += delay;
        delay = (delay * 2).min(ms(200));
    }
    dials
}

/// The schedule bound above, by hand: 8 dials fit in the first second.
#[test]
fn schedule_bound_matches_the_backoff() {
    assert_eq!(dials_allowed_within(ms(0)), 1);
    assert_eq!(dials_allowed_within(ms(59)), 2);
    assert_eq!(dials_allowed_within(ms(1000)), 8);
    assert_eq!(dials_allowed_within(ms(1100)), 9);
    let delays: Vec<_> = backoff().schedule(1).take(6).collect();
    assert_eq!(delays, [ms(20), ms(40), ms(80), ms(160), ms(200), ms(200)]);
}
