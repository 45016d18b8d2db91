//! The drop-in's code (`drop_in::app`) when the server goes away: through
//! `kill -9`s and restarts, on `RedisManager` and on `ConnectionManager`,
//! with the books kept; failing fast past the wait limit; a server that
//! reloads its dataset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::{AsyncCommands, RedisError, RedisResult};
use support::outcome::{Outcome, Tally};
use support::redis_server::RedisServer;
use tokio::sync::watch;
use tokio::time::sleep;
use tower_redial::error::Unavailable;
use tower_redial::redis::client_error;
use tower_redial::state::Phase;
use tower_redial::BoxError;
use tower_redial_interop::redis_books::{deadline, TASKS};

use super::drop_in::{app, ms, ours, theirs};

/// How one counted `INCR` ended, read from the `RedisError` alone: the
/// client's own error (failed fast, never sent) where `client_error` finds
/// one; an IO error otherwise may have run; anything else is a reply.
fn outcome(result: &RedisResult<i64>) -> Outcome {
    let Err(error) = result else {
        return Outcome::Ok;
    };
    match client_error(error) {
        Some(ours) => Outcome::of_error(ours),
        None if error.is_io_error() => Outcome::Ambiguous,
        None => Outcome::Refused,
    }
}

/// What the counting callers saw.
#[derive(Debug, Default)]
struct Books {
    tally: Tally,
    /// The highest value an acknowledged `INCR` answered.
    highest: i64,
}

/// `TASKS` callers of `app::count` on clones of `con`, until `stop`;
/// `answered` counts the successes.
async fn count_until<C>(con: C, stop: Arc<AtomicBool>, answered: Arc<watch::Sender<u64>>) -> Books
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let callers: Vec<_> = (0..TASKS)
        .map(|id| {
            let (mut con, stop, answered) = (con.clone(), stop.clone(), answered.clone());
            tokio::spawn(async move {
                let mut books = Books::default();
                let mut i = id;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let result = app::count(&mut con, i % 2 == 0).await;
                    let boxed = result.clone().map_err(BoxError::from);
                    match books.tally.record_as(outcome(&result), &boxed) {
                        Outcome::Ok => {
                            books.highest = books.highest.max(*result.as_ref().unwrap());
                            answered.send_modify(|n| *n += 1);
                        }
                        Outcome::Unavailable => sleep(ms(10)).await,
                        // ConnectionManager fails at once while it redials.
                        Outcome::Ambiguous => sleep(ms(1)).await,
                        _ => {}
                    }
                }
                books
            })
        })
        .collect();
    let mut books = Books::default();
    for caller in deadline("callers", futures::future::try_join_all(callers))
        .await
        .expect("no caller panicked")
    {
        books.tally.add(&caller.tally);
        books.highest = books.highest.max(caller.highest);
    }
    books
}

/// Runs the counting callers on `con` while `server` is killed with
/// `kill -9` and restarted `kills` times, and returns the books and the
/// server's final count.
async fn count_through_kills<C>(con: C, server: &mut RedisServer, kills: usize) -> (Books, i64)
where
    C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
{
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(watch::Sender::new(0u64));
    let callers = tokio::spawn(count_until(con, stop.clone(), answered.clone()));
    let answers = |more: u64| {
        let mut progress = answered.subscribe();
        let target = *progress.borrow() + more;
        async move {
            deadline("answers", progress.wait_for(|&n| n >= target))
                .await
                .expect("the counter lives");
        }
    };
    for _ in 0..kills {
        answers(100).await;
        server.kill_and_restart().await;
    }
    answers(200).await;
    stop.store(true, Ordering::SeqCst);
    let books = deadline("the callers", callers).await.expect("callers");
    (books, server.counter("counter").await)
}

/// The books of `app::count` through five `kill -9`s and restarts of a
/// durable server, run once on `RedisManager` and once on
/// `ConnectionManager`, the same code: every `INCR` (half of them in
/// transactions) ended once, as acknowledged (S), failed unsent or failed
/// fast (never ran), or failed with an IO error (A, may have run); the
/// server's count lies in S..=S+A, so no acknowledged `INCR` was lost and
/// none ran twice. Ours fails none with anything else, and, with outages
/// well under its wait limit, fails none fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_same_code_keeps_the_books_through_kill_nine() {
    const KILLS: usize = 5;
    for subject in ["ours", "ConnectionManager"] {
        let mut server = RedisServer::start_durable().await;
        let (books, count) = if subject == "ours" {
            let con = ours(&server, Duration::from_secs(5));
            let run = count_through_kills(con.clone(), &mut server, KILLS).await;
            let stats = con.client().stats();
            println!("{subject}: {stats:?}");
            assert!(stats.drops >= KILLS as u64, "{stats:?}");
            assert_eq!(con.client().state().borrow().phase(), Phase::Ready);
            run
        } else {
            let con = theirs(&server).await;
            count_through_kills(con, &mut server, KILLS).await
        };
        let tally = &books.tally;
        let (s, a) = (tally.ok as i64, tally.ambiguous as i64);
        println!("{subject}: S={s} A={a} server={count}; {tally:?}");
        tally.assert_sane();
        assert_eq!(tally.refused + tally.timed_out, 0, "{subject}: {tally:?}");
        assert!(
            count >= s,
            "{subject}: an acknowledged INCR was lost: {count} < {s}"
        );
        assert!(
            count >= books.highest,
            "{subject}: {count} < {}",
            books.highest
        );
        assert!(
            count <= s + a,
            "{subject}: an INCR ran twice, or one that never ran was counted: {count} > {}",
            s + a
        );
        if subject == "ours" {
            assert_eq!(tally.unavailable, 0, "{tally:?}");
        }
        assert_eq!(server.starts(), 1 + KILLS as u32);
    }
}

/// Past the wait limit, a command on the drop-in fails fast with an IO
/// `RedisError` that redis-rs's checks call a dropped connection, and that
/// holds the client's `Unavailable`, whose `source()` is the last dial
/// error; the command never ran.
#[tokio::test]
async fn failing_fast_is_a_dropped_connection_holding_unavailable() {
    let mut server = RedisServer::start().await;
    let mut con = ours(&server, ms(300));
    let n: i64 = deadline("an INCR", con.incr("counter", 1)).await.unwrap();
    assert_eq!(n, 1);
    server.kill().await;
    let error: RedisError = deadline("an INCR while down", async {
        loop {
            match con.incr::<_, _, i64>("counter", 1).await {
                Err(error) if client_error(&error).is_some_and(|e| e.is::<Unavailable>()) => {
                    return error
                }
                // The command in flight as the server died, or one sent
                // before the client saw the close.
                Err(error) => assert!(error.is_io_error(), "{error:?}"),
                Ok(n) => panic!("answered {n} by a dead server"),
            }
            sleep(ms(10)).await;
        }
    })
    .await;
    assert!(
        error.is_io_error() && error.is_connection_dropped(),
        "{error:?}"
    );
    assert!(!error.is_timeout(), "{error:?}");
    let unavailable = client_error(&error).unwrap().downcast_ref::<Unavailable>();
    let last_dial = std::error::Error::source(unavailable.unwrap()).expect("a last dial error");
    assert_eq!(
        tower_redial::classify::io_error_kind(last_dial),
        Some(std::io::ErrorKind::ConnectionRefused),
        "{last_dial:?}"
    );
    assert_eq!(error.to_string(), unavailable.unwrap().to_string());
    server.restart().await;
    let mut state = con.client().state();
    deadline(
        "the client to redial",
        state.wait_for(|s| s.phase() == Phase::Ready),
    )
    .await
    .expect("the client lives");
    let n: i64 = deadline("an INCR after the restart", con.incr("counter", 1))
        .await
        .unwrap();
    assert_eq!(n, 1, "no persistence, and nothing failed fast ran");
}

/// A transaction, then a command, each sent on the drop-in while the server
/// reloads its dataset (`DEBUG RELOAD`, keeping its connections): each is
/// refused with `-LOADING`, unrun, retires the connection, and is re-sent
/// whole once the server serves. Each ran once, and no `-LOADING` reached
/// the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_and_a_command_refused_while_loading_run_once() {
    let server = RedisServer::start_slow_loading().await;
    let con = ours(&server, Duration::from_secs(20));
    let n: i64 = deadline("an INCR", con.clone().incr("counter", 1))
        .await
        .unwrap();
    assert_eq!(n, 1);

    for (what, expected) in [("a transaction", 111), ("a command", 112)] {
        let before = con.client().stats();
        let reload = server.reload_slowly().await;
        let loading = server.errors("LOADING").await;
        let mut sender = con.clone();
        let sent = tokio::spawn(async move {
            if what == "a command" {
                sender.incr::<_, _, i64>("counter", 1).await
            } else {
                let (a, b): (i64, i64) = redis::pipe()
                    .atomic()
                    .incr("counter", 10)
                    .incr("counter", 100)
                    .query_async(&mut sender)
                    .await?;
                assert_eq!(b - a, 100);
                Ok(b)
            }
        });
        deadline("the refusal", async {
            while server.errors("LOADING").await <= loading {
                sleep(ms(5)).await;
            }
        })
        .await;
        assert!(!sent.is_finished(), "{what} waits while the server loads");
        server.finish_loading().await;
        deadline("DEBUG RELOAD", reload).await.unwrap().unwrap();
        let n = deadline(what, sent).await.unwrap().unwrap();
        assert_eq!(n, expected, "{what} ran once");
        assert_eq!(server.counter("counter").await, expected);
        let stats = con.client().stats();
        println!("{what}: before {before:?}; after {stats:?}");
        assert_eq!(
            stats.retries - before.retries,
            1,
            "{what} re-sent once: {stats:?}"
        );
        assert_eq!(
            stats.drops - before.drops,
            1,
            "{what} retired it: {stats:?}"
        );
        let delay = ["CONFIG", "SET", "key-load-delay", "5000"];
        assert_eq!(server.raw(&delay).await, "+OK\r\n");
    }
}
