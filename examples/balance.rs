//! One client balanced over three servers: traffic shifts away from
//! endpoints that die, and back to them when they return.
//!
//! The example starts three small line-protocol servers, `a`, `b` and `c`
//! (a toy key/value store), on `127.0.0.1`, and one [`Client`] balanced over
//! them with [`MakeReconnect::balance`](tower_redial::MakeReconnect::balance):
//! tower's power-of-two-choices balancer over one reconnecting endpoint per
//! server. A pool of workers sends `GET who` requests through it while the
//! example takes servers down and brings them back, in four phases of about
//! 1.2 s each:
//!
//! 1. all up;
//! 2. `a` down;
//! 3. `a` and `b` down;
//! 4. all back.
//!
//! For each phase it prints how many requests each server served (counted by
//! the servers themselves) and how many requests failed: none, as long as
//! one endpoint is up. A down endpoint redials in the background and gets no
//! requests meanwhile; once its server is back, it gets its share again.
//!
//! Run it with:
//!
//! ```text
//! cargo run --example balance --features balance
//! ```
//!
//! It takes about 5 seconds and needs nothing but free ports on
//! `127.0.0.1`.

use support::line;

fn main() -> Result<(), tower_redial::BoxError> {
    example::main()
}

/// The example itself.
mod example {
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::task::JoinSet;
    use tokio::time::{sleep, Instant};
    use tower::{ServiceBuilder, ServiceExt};
    use tower_redial::connect::Handshake;
    use tower_redial::connect::TcpConnector;
    use tower_redial::state::Stats;
    use tower_redial::{Backoff, BoxError, Client, Jitter, ReconnectLayer, ReconnectPolicy};

    use super::line::{LineConnection, LineServer};

    /// Workers sharing the client (each holds a clone).
    const WORKERS: usize = 16;
    /// How often each worker sends a request.
    const PACE: Duration = Duration::from_millis(2);
    /// How long each phase lasts.
    const PHASE: Duration = Duration::from_millis(1200);
    /// First backoff delay, doubled after each failed dial...
    const BACKOFF_BASE: Duration = Duration::from_millis(20);
    /// ...up to this cap.
    const BACKOFF_CAP: Duration = Duration::from_millis(200);
    /// How long requests wait for an endpoint before failing fast.
    const WAIT_LIMIT: Duration = Duration::from_secs(2);
    /// Width of a bar that stands for every request of a phase.
    const BAR: usize = 40;

    const NAMES: [&str; 3] = ["a", "b", "c"];
    const PHASES: [&str; 4] = ["all up", "a down", "a and b down", "all back"];

    /// What the workers saw, by the phase in which each request was sent.
    #[derive(Default)]
    struct Counts {
        phase: AtomicUsize,
        sent: [AtomicU64; 4],
        failed: [AtomicU64; 4],
    }

    #[tokio::main]
    pub(crate) async fn main() -> Result<(), BoxError> {
        let start = Instant::now();
        let mut servers = Vec::new();
        for name in NAMES {
            let server = LineServer::start().await;
            // Each server answers `GET who` with its own name.
            server.store().set("who", name);
            servers.push(server);
        }

        let policy = ReconnectPolicy::builder()
            .backoff(Backoff::exponential(BACKOFF_BASE, 2.0, BACKOFF_CAP).jitter(Jitter::Full))
            .wait_limit(WAIT_LIMIT)
            .build()?;
        let make = Handshake::new(TcpConnector::new(), LineConnection::handshake);
        let client: Client<String, String> = ServiceBuilder::new()
            .layer(
                ReconnectLayer::new(policy)
                    // GETs are safe to run twice: one lost on a dying
                    // connection may be re-sent to another endpoint.
                    .resend_if(|request: &String| request.starts_with("GET")),
            )
            .service(make)
            .balance(servers.iter().map(LineServer::addr).collect::<Vec<_>>());

        println!("tower-redial balance example: one client, three servers, some of them down\n");
        for (name, server) in NAMES.iter().zip(&servers) {
            println!(
                "  server {name}  a toy key/value store on {}",
                server.addr()
            );
        }
        println!(
            "  client    MakeReconnect::balance over the three: each request goes to the less\n\
             \x20           busy (fewer requests in flight) of two endpoints picked at random among\n\
             \x20           the ready ones; an endpoint that is down redials in the background and\n\
             \x20           is never picked meanwhile"
        );
        println!(
            "  load      {WORKERS} workers; each sends `GET who` every {} ms",
            PACE.as_millis()
        );
        println!(
            "  policy    redial at once, then back off from {} ms, doubling, up to {} ms; GETs\n\
             \x20           lost on a dying connection are re-sent to another endpoint",
            BACKOFF_BASE.as_millis(),
            BACKOFF_CAP.as_millis()
        );

        let counts = Arc::new(Counts::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = JoinSet::new();
        for _ in 0..WORKERS {
            workers.spawn(work(client.clone(), counts.clone(), stop.clone()));
        }

        let mut served = Vec::new();
        for (phase, title) in PHASES.iter().enumerate() {
            println!(
                "\n{} phase {} of {}: {title}",
                stamp(start),
                phase + 1,
                PHASES.len()
            );
            // Requests count in the new phase from here, and so does what
            // the client does about the server going down or coming back.
            counts.phase.store(phase, Ordering::SeqCst);
            let stats_before = client.stats();
            match phase {
                1 => {
                    servers[0].stop().await;
                    println!("           server a stopped");
                }
                2 => {
                    servers[1].stop().await;
                    println!("           server b stopped");
                }
                3 => {
                    servers[0].restart().await;
                    servers[1].restart().await;
                    println!("           servers a and b restarted on their old ports");
                }
                _ => {}
            }
            let before: Vec<u64> = servers.iter().map(LineServer::commands).collect();
            sleep(PHASE).await;
            let after: Vec<u64> = servers.iter().map(LineServer::commands).collect();
            let deltas: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
            report_phase(
                &servers,
                &deltas,
                &counts,
                phase,
                stats_before,
                client.stats(),
            );
            served.push(deltas);
        }

        stop.store(true, Ordering::SeqCst);
        while let Some(joined) = workers.join_next().await {
            joined?;
        }
        summary(&served, &counts, client.stats());
        Ok(())
    }

    /// Sends `GET who` through the client until told to stop, counting each
    /// request in the phase in which it was sent.
    async fn work(client: Client<String, String>, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
        while !stop.load(Ordering::SeqCst) {
            let phase = counts.phase.load(Ordering::SeqCst);
            counts.sent[phase].fetch_add(1, Ordering::Relaxed);
            let reply = client.clone().oneshot("GET who".to_string()).await;
            if !matches!(&reply, Ok(value) if value.starts_with("VALUE ")) {
                counts.failed[phase].fetch_add(1, Ordering::Relaxed);
            }
            sleep(PACE).await;
        }
    }

    /// One line per server with the requests it served in the phase, then the
    /// phase's failures and what the client did behind the scenes.
    fn report_phase(
        servers: &[LineServer],
        deltas: &[u64],
        counts: &Counts,
        phase: usize,
        before: Stats,
        after: Stats,
    ) {
        let total: u64 = deltas.iter().sum();
        for ((name, server), &n) in NAMES.iter().zip(servers).zip(deltas) {
            let state = if server.is_running() { "up" } else { "down" };
            let share = n as f64 / total.max(1) as f64;
            let bar = "█".repeat((share * BAR as f64).round() as usize);
            let line = format!(
                "           {name} {state:<4} {n:>6} requests served {:>4.0}%  {bar}",
                share * 100.0
            );
            println!("{}", line.trim_end());
        }
        let failed = counts.failed[phase].load(Ordering::Relaxed);
        let sent = counts.sent[phase].load(Ordering::Relaxed);
        println!("           failed: {failed} of {sent} requests sent in this phase");
        let redials = after.dial_failures - before.dial_failures;
        let resent = after.retries - before.retries;
        if redials > 0 || resent > 0 {
            println!(
                "           (behind the scenes: redials refused by down servers: {redials}; \
                 requests re-sent: {resent})"
            );
        }
    }

    /// The whole run, phase by phase, and what it shows.
    fn summary(served: &[Vec<u64>], counts: &Counts, stats: Stats) {
        println!("\nrequests served, by server and phase\n");
        println!(
            "  {:<14} {:>7} {:>7} {:>7}   {:>6}",
            "phase", "a", "b", "c", "failed"
        );
        for (phase, deltas) in served.iter().enumerate() {
            println!(
                "  {:<14} {:>7} {:>7} {:>7}   {:>6}",
                PHASES[phase],
                deltas[0],
                deltas[1],
                deltas[2],
                counts.failed[phase].load(Ordering::Relaxed)
            );
        }
        let sent: u64 = counts.sent.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        let failed: u64 = counts
            .failed
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .sum();
        println!("\n  {sent} requests sent, {failed} failed");
        println!(
            "  client stats: {} dials ({} refused), {} re-sends, {} failed fast",
            stats.dials, stats.dial_failures, stats.retries, stats.fail_fast
        );
        println!(
            "\n  While a server was down, the balancer sent nothing its way: its endpoint was not\n  \
             ready while it redialed, so requests went to the endpoints that were. GETs that\n  \
             were on a connection when its server stopped were re-sent to another endpoint.\n  \
             Once the servers returned, their endpoints reconnected within a backoff step and\n  \
             took their share again. Requests would fail fast (Unavailable) only if no endpoint\n  \
             at all had been ready for the {} s wait limit.",
            WAIT_LIMIT.as_secs()
        );
    }

    fn stamp(start: Instant) -> String {
        format!("+{:.2}s", start.elapsed().as_secs_f64())
    }
}
