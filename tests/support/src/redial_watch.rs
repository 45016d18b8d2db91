//! Watching a client redial on its own, for the idle-drop tests against
//! real servers: a record of every state the watch showed, for failure
//! messages, and a wait for "dropped, then ready again" with a deadline.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::{timeout, Instant};
use tower_redial::state::{Phase, Snapshot, Stats};
use tower_redial::Client;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Records each state the client's watch shows (changes in quick
/// succession may show as one), with when, for the test's messages.
pub fn record_phases(mut state: watch::Receiver<Snapshot>) -> Arc<Mutex<Vec<String>>> {
    let start = Instant::now();
    let show = move |s: &Snapshot| {
        let error = s.last_error().map(ToString::to_string);
        format!(
            "{:?} {} attempt {} {error:?}",
            start.elapsed(),
            s.phase(),
            s.attempt()
        )
    };
    let seen = Arc::new(Mutex::new(vec![show(&state.borrow_and_update())]));
    tokio::spawn({
        let seen = seen.clone();
        async move {
            while state.changed().await.is_ok() {
                let shown = show(&state.borrow_and_update());
                lock(&seen).push(shown);
            }
        }
    });
    seen
}

/// Waits, sending nothing, until the client has dropped a connection and
/// is ready again, for at most `guard` (a hang guard, not a speed
/// assumption); returns when it was.
pub async fn ready_after_a_drop<Req, Res>(
    client: &Client<Req, Res>,
    phases: &Mutex<Vec<String>>,
    guard: Duration,
) -> Instant {
    let mut state = client.state();
    let ready = state.wait_for(|s| s.phase() == Phase::Ready && client.stats().drops >= 1);
    let waited = timeout(guard, ready).await.map(|ready| ready.is_ok());
    let ready_at = Instant::now();
    match waited {
        Ok(true) => ready_at,
        Ok(false) => panic!("the client's state watch closed"),
        Err(_) => panic!(
            "not ready again after a drop within {guard:?}: now {:?}, {:?}; seen {:#?}",
            *client.state().borrow(),
            client.stats(),
            lock(phases)
        ),
    }
}

/// Checks a client's counters after one idle drop: one drop, two
/// connections made in all, nothing re-sent. The first redial is immediate,
/// so it may find the server not back yet: refused dials are allowed, one
/// more connection is not.
pub fn assert_one_drop_and_one_redial(stats: &Stats) {
    assert_eq!(stats.drops, 1, "{stats:?}");
    assert_eq!(
        stats.dials - stats.dial_failures,
        2,
        "two connections made: {stats:?}"
    );
    assert_eq!(stats.retries, 0, "{stats:?}");
}
