//! `RedisManager` as a drop-in for redis-rs's `ConnectionManager`: the same
//! code, written as a `ConnectionManager` user writes it (the `app`
//! module), compiled and run against each, with only construction
//! differing; then through `kill -9` and restarts, with the books kept;
//! and pub/sub, which the drop-in refuses.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, RedisError, RedisResult};
use support::outcome::{Outcome, Tally};
use support::redis_server::RedisServer;
use tokio::sync::watch;
use tokio::time::sleep;
use tower::ServiceBuilder;
use tower_redial::error::Unavailable;
use tower_redial::redis::{client_error, MakeRedis, RedisManager};
use tower_redial::state::Phase;
use tower_redial::{BoxError, ReconnectLayer};
use tower_redial_interop::redis_books::{deadline, policy, TASKS};

/// Code written for `ConnectionManager`, as its users write it: generic
/// over redis-rs's `ConnectionLike`, with `AsyncCommands`, pipelines and a
/// script. Nothing here knows tower-redial.
mod app {
    use redis::aio::ConnectionLike;
    use redis::{AsyncCommands, RedisResult};

    /// What one visit reads back.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Visit {
        pub visits: i64,
        pub greeting: Option<String>,
        pub missing: Option<String>,
        pub ttl: i64,
        pub pipelined: (i64, Option<String>),
        pub transaction: (i64, i64),
        pub scripted: i64,
    }

    /// One visit: every kind of call a `ConnectionManager` user makes.
    pub async fn visit<C>(con: &C) -> RedisResult<Visit>
    where
        C: ConnectionLike + Clone + Send + Sync,
    {
        let mut con = con.clone();
        let visits: i64 = con.incr("visits", 1).await?;
        let () = con.set_ex("greeting", "hello", 60).await?;
        let greeting = con.get::<_, Option<String>>("greeting").await?;
        let missing = con.get::<_, Option<String>>("missing").await?;
        let ttl: i64 = con.ttl("greeting").await?;
        let pipelined: (i64, Option<String>) = redis::pipe()
            .incr("visits", 1)
            .set("ignored", 1)
            .ignore()
            .get("greeting")
            .query_async(&mut con)
            .await?;
        let transaction: (i64, i64) = redis::pipe()
            .atomic()
            .incr("visits", 1)
            .incr("visits", 1)
            .query_async(&mut con)
            .await?;
        let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
        let scripted: i64 = script.key("visits").arg(10).invoke_async(&mut con).await?;
        Ok(Visit {
            visits,
            greeting,
            missing,
            ttl,
            pipelined,
            transaction,
            scripted,
        })
    }

    /// One `INCR` of the counter, alternately as a command and inside a
    /// transaction; returns the counter's new value.
    pub async fn count<C>(con: &mut C, as_transaction: bool) -> RedisResult<i64>
    where
        C: ConnectionLike + Send + Sync,
    {
        if as_transaction {
            let (n,): (i64,) = redis::pipe()
                .atomic()
                .incr("counter", 1)
                .query_async(con)
                .await?;
            Ok(n)
        } else {
            con.incr("counter", 1).await
        }
    }
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Ours: only this differs from the `ConnectionManager` form.
fn ours(server: &RedisServer, wait_limit: Duration) -> RedisManager {
    let make = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(
            Duration::from_secs(1),
            wait_limit,
        )))
        .service(MakeRedis::new());
    RedisManager::new(&make, server.url()).expect("a valid URL")
}

async fn theirs(server: &RedisServer) -> ConnectionManager {
    let config = ConnectionManagerConfig::new().set_response_timeout(Some(Duration::from_secs(5)));
    deadline(
        "a connection manager",
        redis::Client::open(server.url())
            .expect("a valid URL")
            .get_connection_manager_with_config(config),
    )
    .await
    .expect("a connection manager")
}

/// The same `app::visit`, compiled for and run against `ConnectionManager`
/// and `RedisManager`, each on a fresh server: the same replies, call for
/// call (a command, `set_ex`, `Option` reads, a pipeline with an ignored
/// reply, a transaction, a script loaded on its first run).
#[tokio::test]
async fn the_same_code_runs_on_connection_manager_and_on_ours() {
    let manager_server = RedisServer::start().await;
    let manager = theirs(&manager_server).await;
    let with_manager = deadline("a visit", app::visit(&manager)).await.unwrap();

    let ours_server = RedisServer::start().await;
    let con = ours(&ours_server, Duration::from_secs(1));
    let with_ours = deadline("a visit", app::visit(&con)).await.unwrap();

    println!("{with_ours:?}");
    assert_eq!(with_ours, with_manager);
    assert_eq!(with_ours.visits, 1);
    assert_eq!(with_ours.greeting.as_deref(), Some("hello"));
    assert_eq!(with_ours.missing, None);
    assert_eq!(with_ours.transaction, (3, 4));
    assert_eq!(with_ours.scripted, 14);
    assert_eq!(ours_server.counter("visits").await, 14);
    assert_eq!(redis::aio::ConnectionLike::get_db(&con), 0);
    let stats = con.client().stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");
}

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

/// Pub/sub on the drop-in: `SUBSCRIBE` (and its kin, and `MONITOR`) is
/// refused before it is sent, with a `Client` error naming the command, in a
/// pipeline too, and the shared connection goes on serving commands. A
/// redis-rs `PubSub` of its own, as the error says, receives what is
/// published through the drop-in.
#[tokio::test]
async fn pubsub_is_refused_and_redis_rs_pubsub_works_beside_it() {
    use futures::StreamExt;

    let server = RedisServer::start().await;
    let mut con = ours(&server, Duration::from_secs(1));
    let () = deadline("a SET", con.set("k", "v")).await.unwrap();
    for command in [
        "SUBSCRIBE",
        "psubscribe",
        "SSUBSCRIBE",
        "UNSUBSCRIBE",
        "MONITOR",
    ] {
        let error = deadline(
            command,
            redis::cmd(command).arg("news").query_async::<()>(&mut con),
        )
        .await
        .unwrap_err();
        assert_eq!(error.kind(), redis::ErrorKind::Client, "{error:?}");
        assert_eq!(error.detail(), Some(command), "{error:?}");
        assert!(error.to_string().contains("PubSub"), "{error}");
    }
    let error = deadline(
        "a pipeline",
        redis::pipe()
            .get("k")
            .cmd("SUBSCRIBE")
            .arg("news")
            .query_async::<()>(&mut con),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), redis::ErrorKind::Client, "{error:?}");
    assert_eq!(
        server.raw(&["PUBSUB", "NUMSUB", "news"]).await,
        "*2\r\n$4\r\nnews\r\n:0\r\n"
    );
    let v: String = deadline("a GET", con.get("k")).await.unwrap();
    assert_eq!(v, "v", "the connection still serves commands");
    let stats = con.client().stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");

    let mut pubsub = deadline(
        "a PubSub",
        redis::Client::open(server.url())
            .unwrap()
            .get_async_pubsub(),
    )
    .await
    .unwrap();
    deadline("SUBSCRIBE", pubsub.subscribe("news"))
        .await
        .unwrap();
    let receivers: i64 = deadline("PUBLISH", con.publish("news", "hello"))
        .await
        .unwrap();
    assert_eq!(receivers, 1);
    let message = deadline("a message", pubsub.on_message().next())
        .await
        .unwrap();
    assert_eq!(message.get_payload::<String>().unwrap(), "hello");
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

/// `RedisManager::new` refuses a malformed URL with redis-rs's own error,
/// as `redis::Client::open` does; it dials nothing until the first
/// command; and `get_db` reports the URL's database, which the commands
/// use.
#[tokio::test]
async fn construction_parses_the_target_and_dials_lazily() {
    let server = RedisServer::start().await;
    let make = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(Duration::from_secs(1), ms(300))))
        .service(MakeRedis::new());
    let malformed = RedisManager::new(&make, "redis://127.0.0.1:port/").unwrap_err();
    let theirs = redis::Client::open("redis://127.0.0.1:port/").unwrap_err();
    assert_eq!(malformed.kind(), theirs.kind(), "{malformed:?}");
    assert_eq!(malformed.kind(), redis::ErrorKind::InvalidClientConfig);

    let url = format!("redis://127.0.0.1:{}/3", server.port());
    let mut con = RedisManager::new(&make, url).unwrap();
    assert_eq!(redis::aio::ConnectionLike::get_db(&con), 3);
    sleep(ms(50)).await;
    assert_eq!(con.client().stats().dials, 0, "nothing dialed yet");
    let info: String = deadline(
        "CLIENT INFO",
        redis::cmd("CLIENT").arg("INFO").query_async(&mut con),
    )
    .await
    .unwrap();
    assert!(info.contains(" db=3 "), "{info}");
    assert_eq!(con.client().stats().dials, 1);
}
