//! Logs: credentials never printed, no floods. In its own test binary,
//! because `tracing`'s per-callsite interest cache is process-wide and
//! other tests running at the same time would race with it.

use support::scripted;

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use scripted::{within, Dial, Dialer};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_redial::{Backoff, BoxError, Client, ReconnectLayer, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// How long a test waits on the client, a connection or a task before it
/// fails: far past every delay the test expects.
const DEADLINE: Duration = Duration::from_secs(60);

/// Sends one request, and fails the test if no answer comes.
async fn send(client: Client<String, String>, request: &str) -> Result<String, BoxError> {
    let answer = format!("the answer to {request}");
    within(DEADLINE, &answer, client.oneshot(request.to_string())).await
}

/// A `MakeWriter` that keeps everything logged.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Captures this thread's logs at `level` and above (the current-thread
/// runtime runs the client's task on it too) while the guard lives.
fn capture(level: tracing::Level) -> (Captured, tracing::subscriber::DefaultGuard) {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(level)
        .with_ansi(false)
        .finish();
    (logs, tracing::subscriber::set_default(subscriber))
}

/// Answers the `PING` on `conn` with `PONG`, and waits for the caller.
async fn answer(
    conn: &mut scripted::ConnHandle,
    request: tokio::task::JoinHandle<Result<String, BoxError>>,
) {
    let (_, reply) = within(DEADLINE, "the request", conn.next_request())
        .await
        .unwrap();
    reply.send_response("PONG".to_string());
    within(DEADLINE, "the request's task", request)
        .await
        .unwrap()
        .unwrap();
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

/// Promise 10: a target with a password is never printed, dial errors that
/// repeat it are masked too, and an outage logs one warning and one
/// recovery line however many dials it takes.
#[tokio::test(start_paused = true)]
async fn logs_mask_credentials_and_do_not_flood() {
    let (logs, _guard) = capture(tracing::Level::TRACE);

    let dialer = Dialer::new([Dial::Refuse; 6]);
    dialer.push([Dial::Connect]);
    let d = dialer.clone();
    // A connector whose errors repeat the target, as many do.
    let make = service_fn(move |target: &'static str| {
        let dial = d.clone().call(target);
        async move {
            dial.await
                .map_err(|e| BoxError::from(format!("dial {target}: {e}")))
        }
    });
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(
            ReconnectPolicy::builder()
                .backoff(Backoff::exponential(ms(100), 2.0, ms(1000)))
                .wait_limit(Duration::from_secs(60))
                .build()
                .unwrap(),
        ))
        .service(make)
        .client("redis://app:hunter2@127.0.0.1:6379/0");

    let request = tokio::spawn(send(client.clone(), "PING"));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    answer(&mut conn, request).await;
    // The recovery is noticed on the next request.
    let request = tokio::spawn(send(client.clone(), "PING"));
    answer(&mut conn, request).await;

    let text = logs.text();
    assert!(!text.contains("hunter2"), "password printed:\n{text}");
    assert!(text.contains("redis://app:***@127.0.0.1:6379/0"), "{text}");
    let count = |needle: &str| text.lines().filter(|l| l.contains(needle)).count();
    assert_eq!(count(": dialing "), 7, "{text}");
    assert_eq!(count(" WARN "), 1, "one warning per outage:\n{text}");
    assert_eq!(count("connection recovered"), 1, "{text}");
    assert!(text.contains("attempts=7"), "{text}");
    assert_eq!(client.stats().dial_failures, 6);
}

/// The one warning of an outage names what actually happened: here, an idle
/// connection closed by its peer (end of file), not a vague "transport
/// error".
#[tokio::test(start_paused = true)]
async fn the_outage_warning_names_the_actual_cause() {
    let (logs, _guard) = capture(tracing::Level::WARN);

    let dialer = Dialer::new([Dial::Connect, Dial::Connect]);
    let client: Client<String, String> = ServiceBuilder::new()
        .layer(ReconnectLayer::new(ReconnectPolicy::default()))
        .service(dialer.clone())
        .client("db");
    let request = tokio::spawn(send(client.clone(), "PING"));
    let mut conn = dialer.conn_within(0, DEADLINE).await;
    answer(&mut conn, request).await;

    dialer.hang_up(0);
    dialer.conn_within(1, DEADLINE).await;
    let text = logs.text();
    let warning: Vec<_> = text.lines().filter(|l| l.contains(" WARN ")).collect();
    assert_eq!(warning.len(), 1, "{text}");
    assert!(
        warning[0].contains("connection closed: unexpected end of file"),
        "{text}"
    );
}
