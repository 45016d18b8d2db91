//! The policy's response timeout, off by default: a request whose response
//! does not come in time fails with `ResponseTimeout`, and a connection that
//! serves one request at a time is then dead and redialed, so a silent
//! server cannot hold requests until the callers' own timeouts. Scripted
//! factory, paused time, every await bounded.

use support::scripted;

use std::time::Duration;

use scripted::{within, ConnHandle, Dial, Dialer};
use tokio::time::{timeout, Instant};
use tower::{ServiceBuilder, ServiceExt};
use tower_redial::error::ResponseTimeout;
use tower_redial::{Client, ReconnectLayer, ReconnectPolicy};

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn policy() -> ReconnectPolicy {
    ReconnectPolicy::builder()
        .response_timeout(secs(1))
        .build()
        .unwrap()
}

/// Sends `request` and answers it on connection `id`; returns the test's
/// end of that connection.
async fn answered(
    dialer: &Dialer,
    client: &Client<String, String>,
    id: usize,
    request: &str,
) -> ConnHandle {
    let pending = tokio::spawn(client.clone().oneshot(request.to_string()));
    let mut conn = within(secs(10), "the connection", dialer.conn(id)).await;
    let (got, reply) = within(secs(10), "the request", conn.next_request())
        .await
        .unwrap();
    assert_eq!(got, request);
    reply.send_response(format!("re: {request}"));
    let result = within(secs(10), "the reply", pending).await.unwrap();
    assert_eq!(result.unwrap(), format!("re: {request}"));
    conn
}

/// On a one-at-a-time connection, a request the server never answers fails
/// with `ResponseTimeout` at the deadline; the connection counts as dead
/// and is redialed at once, and the next request is served on the new one.
#[tokio::test(start_paused = true)]
async fn a_silent_server_fails_the_request_and_kills_the_connection() {
    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(dialer.clone())
        .client("db");
    let _conn0 = answered(&dialer, &client, 0, "first").await;

    let sent = Instant::now();
    let result = within(
        secs(10),
        "the silent request",
        client.clone().oneshot("GET".into()),
    )
    .await;
    assert_eq!(Instant::now() - sent, secs(1), "failed at the deadline");
    let error = result.unwrap_err();
    assert_eq!(
        error.downcast_ref::<ResponseTimeout>().unwrap().after(),
        secs(1)
    );
    within(secs(10), "the redial", async {
        while dialer.connections() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(dialer.connected_at(1) - sent, secs(1), "redialed at once");
    assert_eq!(client.stats().drops, 1, "the silent connection is dead");
    let _conn1 = answered(&dialer, &client, 1, "next").await;
}

/// On a multiplexed connection only the request fails: the others on the
/// connection are not answers to it, so the connection lives.
#[tokio::test(start_paused = true)]
async fn on_a_multiplexed_connection_only_the_request_fails() {
    let dialer = Dialer::new([Dial::Connect]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy()))
        .service(dialer.clone())
        .multiplexed("db");
    let _conn0 = answered(&dialer, &client, 0, "first").await;
    let result = within(
        secs(10),
        "the silent request",
        client.clone().oneshot("GET".into()),
    )
    .await;
    assert!(result.unwrap_err().is::<ResponseTimeout>());
    assert_eq!(client.stats().drops, 0);
    assert_eq!(dialer.dials(), 1);
}

/// Without a response timeout (the default), a request waits for its
/// response as long as it takes.
#[tokio::test(start_paused = true)]
async fn without_a_timeout_a_request_waits() {
    let dialer = Dialer::new([Dial::Connect]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(ReconnectPolicy::default()))
        .service(dialer.clone())
        .client("db");
    let _conn0 = answered(&dialer, &client, 0, "first").await;
    let slow = timeout(secs(3600), client.clone().oneshot("GET".into())).await;
    assert!(slow.is_err(), "still waiting after an hour");
}
