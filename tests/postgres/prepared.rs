//! `Query::prepared`: the connection keeps the statement prepared, and a
//! new connection prepares it again, unasked, after the backend is killed
//! and after the server restarts.
#![cfg(feature = "postgres")]

use std::time::Duration;

use support::pg_server::PgServer;
use tokio_postgres::NoTls;
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::postgres::{MakePostgres, PgClient, Query};
use tower_redial::state::Phase;
use tower_redial::{Backoff, ReconnectLayer, ReconnectPolicy};

use crate::{within, Config as _};

const LOOKUP: &str = "SELECT $1::bigint * 2";

/// Runs the lookup (prepared or not) for `n`, and returns how many
/// statements with its text the session holds prepared while it runs, and
/// the session's pid.
async fn lookup(client: &PgClient, n: i64, prepared: bool) -> (i64, i32) {
    let query = Query::new(LOOKUP).bind(n);
    let query = if prepared { query.prepared() } else { query };
    let rows = client.clone().oneshot(query).await.unwrap();
    assert_eq!(rows.first().unwrap().get::<_, i64>(0), n * 2);
    // Rows hold their statement: an unprepared one is closed once they go.
    drop(rows);
    let rows = client
        .clone()
        .oneshot(
            Query::new(
                "SELECT count(*) FILTER (WHERE statement = $1), pg_backend_pid() \
                 FROM pg_prepared_statements",
            )
            .bind(LOOKUP),
        )
        .await
        .unwrap();
    let row = rows.first().unwrap();
    (row.get(0), row.get(1))
}

/// Waits until the client has dropped its connection `drops` times and is
/// ready again.
async fn redialed(client: &PgClient, drops: u64) {
    let mut state = client.state();
    loop {
        if client.stats().drops >= drops && state.borrow().phase() == Phase::Ready {
            return;
        }
        state.changed().await.unwrap();
    }
}

/// A prepared query is prepared once per connection and kept: the session
/// holds exactly one statement with its text however often it runs (an
/// unprepared query holds none once it has run). After the backend is
/// killed, and after an immediate restart of the server, the same query
/// works on the new connection with nothing done by the caller, prepared
/// again there, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_are_kept_and_prepared_again_after_a_redial() {
    let server = PgServer::start().await;
    let policy = ReconnectPolicy::builder()
        .backoff(Backoff::exponential(
            Duration::from_millis(10),
            2.0,
            Duration::from_millis(200),
        ))
        .wait_limit(Duration::from_secs(20))
        .build()
        .unwrap();
    let client: PgClient = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy))
        .service(MakePostgres::new())
        .client(server.config());

    within("unprepared queries", async {
        for n in 0..3 {
            assert_eq!(
                lookup(&client, n, false).await.0,
                0,
                "closed after each run"
            );
        }
    })
    .await;
    let pid = within("prepared queries", async {
        let mut pid = 0;
        for n in 0..3 {
            let (kept, session) = lookup(&client, n, true).await;
            assert_eq!(kept, 1, "prepared once, kept");
            pid = session;
        }
        pid
    })
    .await;

    // Another session kills ours.
    let (killer, connection) = server.config().connect(NoTls).await.unwrap();
    tokio::spawn(connection);
    let killed: bool = killer
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    drop(killer);
    within("the redial", redialed(&client, 1)).await;
    let (kept, new_pid) = within("prepared on the new session", lookup(&client, 5, true)).await;
    assert_ne!(new_pid, pid, "a new session");
    assert_eq!(kept, 1, "prepared again, once");

    within("the restart", server.restart()).await;
    within("the redial", redialed(&client, 2)).await;
    within("prepared after the restart", async {
        for n in 0..3 {
            assert_eq!(lookup(&client, n, true).await.0, 1);
        }
    })
    .await;
    let stats = client.stats();
    assert_eq!(stats.drops, 2, "{stats:?}");
    assert_eq!(stats.retries, 0, "nothing re-sent: {stats:?}");
}
