//! The books of a run against a real `redis-server` that is taken down and
//! started again under load: how each command ended, the callers that
//! `INCR` (and `GET`) one counter and check that it never goes back, and
//! the run that spawns them, waits for answers between restarts and adds up
//! what they saw. Shared by `tests/redis.rs` (`kill -9`) and
//! `tests/redis_restart.rs` (restarts that load an append-only file).
// Each test file uses one of the two `Commands`.

use std::error::Error;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{Cmd, ErrorKind, ServerErrorKind, Value};
use support::line::find_error;
use support::outcome::{Outcome, Tally};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{sleep, timeout, Instant};
use tower::ServiceExt;
use tower_redial::redis::{redis_error, NotServing, RedisClient};
use tower_redial::{Backoff, BoxError, Jitter, ReconnectPolicy};

/// Concurrent callers in a run.
pub const TASKS: usize = 16;
/// How long anything may take before the test counts it as hung.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Awaits `future`, or fails the test if it hangs.
pub async fn deadline<F: Future>(what: &str, future: F) -> F::Output {
    timeout(HANG_GUARD, future)
        .await
        .unwrap_or_else(|_| panic!("hung for {HANG_GUARD:?}: {what}"))
}

/// 10 ms, 20, 40, 80, then 100 ms between dials; no jitter.
pub fn policy(connect_timeout: Duration, wait_limit: Duration) -> ReconnectPolicy {
    let ms = Duration::from_millis;
    ReconnectPolicy::builder()
        .backoff(Backoff::exponential(ms(10), 2.0, ms(100)).jitter(Jitter::None))
        .connect_timeout(connect_timeout)
        .wait_limit(wait_limit)
        .seed(1)
        .build()
        .expect("valid policy")
}

/// `INCR counter`: the command each run counts with.
pub fn incr() -> Cmd {
    Cmd::incr("counter", 1)
}

// ---------------------------------------------------------------------------
// Outcomes
// ---------------------------------------------------------------------------

/// How one command ended, as its caller saw it: the shared reading, with
/// redis-rs's own errors read first where they say more. The server's
/// refusal as not serving (`-LOADING`, `-MASTERDOWN`), even handed back
/// with its re-sends spent, and any other error reply are
/// [`Refused`](Outcome::Refused); an IO `RedisError` is
/// [`Ambiguous`](Outcome::Ambiguous).
pub fn outcome<T>(result: &Result<T, BoxError>) -> Outcome {
    let Err(error) = result else {
        return Outcome::Ok;
    };
    match Outcome::of_error(&**error) {
        gave_up @ (Outcome::Unavailable | Outcome::Closed) => gave_up,
        _ if says_not_serving(&**error) => Outcome::Refused,
        Outcome::NotSent => Outcome::NotSent,
        // redis-rs reports every other failure as a `RedisError`.
        _ => match redis_error(&**error) {
            Some(redis) if redis.is_io_error() => Outcome::Ambiguous,
            Some(_) => Outcome::Refused,
            None => Outcome::Unexpected,
        },
    }
}

/// The server's refusal of a command as not serving, if `error` holds one
/// in any form: a `NotServing`, or the reply itself.
pub fn says_not_serving(error: &(dyn Error + 'static)) -> bool {
    find_error::<NotServing>(error).is_some()
        || redis_error(error).is_some_and(|e| {
            matches!(
                e.kind(),
                ErrorKind::Server(ServerErrorKind::BusyLoading | ServerErrorKind::MasterDown)
            )
        })
}

/// An integer reply, as `INCR` gives; anything else fails the test.
pub fn int(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        other => panic!("not an integer: {other:?}"),
    }
}

/// The counter as `GET` reads it: `Nil` (never incremented) is 0, and a
/// string must parse as an integer.
pub fn int_or_nil(value: &Value) -> i64 {
    match value {
        Value::Int(n) => *n,
        Value::Nil => 0,
        other => {
            redis::from_redis_value(other.clone()).unwrap_or_else(|e| panic!("{other:?}: {e}"))
        }
    }
}

// ---------------------------------------------------------------------------
// The books
// ---------------------------------------------------------------------------

/// What the callers saw.
#[derive(Debug, Default)]
pub struct Books {
    /// Every command, by how it ended.
    pub tally: Tally,
    pub incr_ok: u64,
    pub incr_ambiguous: u64,
    pub slowest: Duration,
    /// How the slowest command ended.
    pub slowest_outcome: Option<Outcome>,
    /// How one caller's last command ended; not added up.
    pub last: Option<Outcome>,
    /// Callers whose counter was answered out of order.
    pub violations: Vec<String>,
}

impl Books {
    pub fn add(&mut self, other: Books) {
        self.tally.add(&other.tally);
        self.incr_ok += other.incr_ok;
        self.incr_ambiguous += other.incr_ambiguous;
        if other.slowest > self.slowest {
            self.slowest = other.slowest;
            self.slowest_outcome = other.slowest_outcome;
        }
        self.violations.extend(other.violations);
    }
}

/// What each caller sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Commands {
    /// `INCR counter`, over and over.
    Incr,
    /// `INCR counter` and `GET counter` in turn.
    IncrAndGet,
}

/// One caller: `commands` until told to stop. Every acknowledged `INCR` was
/// fsynced before its reply, so the counter never goes back: each
/// acknowledged `INCR` must answer more than the last one this caller saw
/// acknowledged, and each `GET` at least as much.
async fn caller(
    id: usize,
    client: RedisClient,
    commands: Commands,
    answered: Arc<watch::Sender<u64>>,
    stop: Arc<AtomicBool>,
) -> Books {
    let mut books = Books::default();
    let mut seen = 0i64;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let is_incr = commands == Commands::Incr || i.is_multiple_of(2);
        i += 1;
        let command = if is_incr { incr() } else { Cmd::get("counter") };
        let sent = Instant::now();
        let result = client.clone().oneshot(command).await;
        let took = sent.elapsed();
        let outcome = books.tally.record_as(outcome(&result), &result);
        if took > books.slowest {
            books.slowest = took;
            books.slowest_outcome = Some(outcome);
        }
        books.last = Some(outcome);
        match (outcome, is_incr) {
            (Outcome::Ok, true) => {
                books.incr_ok += 1;
                let value = int(result.as_ref().unwrap());
                if value <= seen {
                    books
                        .violations
                        .push(format!("caller {id}: INCR answered {value} after {seen}"));
                }
                seen = value;
            }
            (Outcome::Ok, false) => {
                let value = int_or_nil(result.as_ref().unwrap());
                if value < seen {
                    books.violations.push(format!(
                        "caller {id}: GET answered {value} after an INCR answered {seen}"
                    ));
                }
                seen = seen.max(value);
            }
            (Outcome::Ambiguous, incr) => books.incr_ambiguous += u64::from(incr),
            // Failing fast is instant: pace the loop.
            (Outcome::Unavailable, _) => sleep(Duration::from_millis(10)).await,
            _ => {}
        }
        if outcome == Outcome::Ok {
            answered.send_modify(|n| *n += 1);
        }
    }
    books
}

// ---------------------------------------------------------------------------
// A run
// ---------------------------------------------------------------------------

/// `TASKS` callers at work through one client, and the count of the
/// answers they have had.
pub struct Callers {
    tasks: Vec<JoinHandle<Books>>,
    answered: Arc<watch::Sender<u64>>,
    stop: Arc<AtomicBool>,
}

impl Callers {
    /// Spawns `TASKS` callers of `client`, each sending `commands`.
    pub fn spawn(client: &RedisClient, commands: Commands) -> Self {
        let answered = Arc::new(watch::Sender::new(0u64));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..TASKS)
            .map(|id| {
                let caller = caller(id, client.clone(), commands, answered.clone(), stop.clone());
                tokio::spawn(caller)
            })
            .collect();
        Self {
            tasks,
            answered,
            stop,
        }
    }

    /// Waits until the callers have had `more` answers past those they had
    /// so far; `what` names the wait if it hangs.
    pub async fn answers(&self, more: u64, what: &str) {
        let mut progress = self.answered.subscribe();
        let target = *progress.borrow() + more;
        deadline(what, progress.wait_for(|&n| n >= target))
            .await
            .expect("the counter lives here");
    }

    /// Tells the callers to stop and waits for them; returns their books
    /// added up, and how each one's last command ended.
    pub async fn stop(self) -> (Books, Vec<Option<Outcome>>) {
        self.stop.store(true, Ordering::SeqCst);
        let mut books = Books::default();
        let mut lasts = Vec::new();
        for caller in deadline("callers", futures::future::try_join_all(self.tasks))
            .await
            .expect("no caller panicked")
        {
            lasts.push(caller.last);
            books.add(caller);
        }
        (books, lasts)
    }
}
