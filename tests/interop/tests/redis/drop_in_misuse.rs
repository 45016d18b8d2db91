//! `RedisManager` used as redis-rs's users use a `ConnectionManager`, and
//! misused: scripts the server forgot, blocking commands, huge pipelines,
//! and the commands that carry connection state.

use std::time::Duration;

use redis::AsyncCommands;
use support::redis_server::RedisServer;
use tower::ServiceBuilder;
use tower_redial::redis::{MakeRedis, RedisManager};
use tower_redial::ReconnectLayer;

use tower_redial_interop::redis_books::{deadline as within, policy};

fn ours(url: &str) -> RedisManager {
    let make = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(
            Duration::from_secs(1),
            Duration::from_secs(10),
        )))
        .service(MakeRedis::new());
    RedisManager::new(&make, url).expect("a valid URL")
}

/// Waits until the manager has seen its connection die (the socket is
/// watched), so that the next command goes to a new connection.
async fn dropped(con: &RedisManager) {
    within("the client sees the kill", async {
        while con.client().stats().drops == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

/// A `RedisManager` outlives the maker it was made from: it is used, and
/// redials after a `kill -9` and restart of the server, after every clone
/// of the maker is gone (`ours` drops it before returning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manager_outlives_its_maker_and_redials_without_it() {
    let mut server = RedisServer::start().await;
    let mut con = ours(&server.url());
    let n: i64 = within("incr", con.incr("x", 1)).await.unwrap();
    assert_eq!(n, 1);
    server.kill_and_restart().await;
    let n: i64 = within("incr after the restart", async {
        loop {
            match con.incr("x", 1).await {
                Ok(n) => return n,
                // The command in flight as the server died may fail.
                Err(error) => assert!(error.is_io_error(), "{error:?}"),
            }
        }
    })
    .await;
    assert_eq!(n, 1, "a fresh server");
    assert!(con.client().stats().drops >= 1);
}

/// A `Script` whose SHA the server forgot (`SCRIPT FLUSH`, as after a
/// restart) is loaded again by redis-rs's `NOSCRIPT` fallback: the error
/// reply comes through the drop-in as redis-rs expects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_is_loaded_again_after_script_flush() {
    let server = RedisServer::start().await;
    let mut con = ours(&server.url());
    let script = redis::Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let n: i64 = within("script", script.key("x").arg(5).invoke_async(&mut con))
        .await
        .unwrap();
    assert_eq!(n, 5);
    server.raw(&["SCRIPT", "FLUSH"]).await;
    let n: i64 = within(
        "script after FLUSH",
        script.key("x").arg(5).invoke_async(&mut con),
    )
    .await
    .unwrap();
    assert_eq!(n, 10);
}

/// `BLPOP` with a timeout past redis-rs's default response timeout
/// (500 ms) fails with `is_timeout`, as the module docs say, and the
/// connection is redialed; with the response timeout removed through
/// `MakeRedis::with_config`, it blocks for its own timeout and answers nil.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_needs_the_response_timeout_raised() {
    let server = RedisServer::start().await;
    let mut con = ours(&server.url());
    let blocked: redis::RedisResult<Option<(String, String)>> =
        within("BLPOP", con.blpop("empty", 2.0)).await;
    let error = blocked.unwrap_err();
    assert!(error.is_timeout(), "{error:?}");
    let n: i64 = within("incr after", con.incr("x", 1)).await.unwrap();
    assert_eq!(n, 1);

    let make = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(
            Duration::from_secs(1),
            Duration::from_secs(10),
        )))
        .service(MakeRedis::with_config(
            redis::AsyncConnectionConfig::new().set_response_timeout(None),
        ));
    let mut patient = RedisManager::new(&make, server.url()).unwrap();
    let popped: Option<(String, String)> =
        within("BLPOP", patient.blpop("empty", 1.0)).await.unwrap();
    assert_eq!(popped, None);
    assert_eq!(patient.client().stats().drops, 0);
}

/// A pipeline far too big for the 500 ms response timeout (300 000
/// `INCR`s, plain and atomic) fails with a timeout (or, on a fast
/// machine, succeeds), but never runs more than once: the plain one ran
/// at most once per command (the connection may be dropped part way
/// through writing it), and the atomic one all or nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_pipeline_past_the_response_timeout_runs_at_most_once() {
    const N: i64 = 300_000;
    let server = RedisServer::start().await;
    let mut con = ours(&server.url());
    for (key, atomic) in [("plain", false), ("atomic", true)] {
        let mut pipe = redis::pipe();
        if atomic {
            pipe.atomic();
        }
        for _ in 0..N {
            pipe.incr(key, 1).ignore();
        }
        let result: redis::RedisResult<()> =
            within("the pipeline", pipe.query_async(&mut con)).await;
        if let Err(error) = &result {
            assert!(error.is_timeout(), "{error:?}");
        }
        // Until the counter stops moving: two reads 500 ms apart agree.
        let settled = within("the counter settles", async {
            let mut last = server.counter(key).await;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = server.counter(key).await;
                if now == last {
                    return now;
                }
                last = now;
            }
        })
        .await;
        println!("{key}: {result:?}, {settled} of {N} ran");
        if result.is_ok() || atomic {
            assert!(settled == N || (atomic && settled == 0), "{key}: {settled}");
        }
        assert!(settled <= N, "{key}: ran more than once: {settled}");
    }
}

/// A transaction sent command by command (`MULTI`, then each command, then
/// `EXEC`) is refused at its first command, before anything is sent: a
/// redial between them would send the rest to a new connection, where no
/// `MULTI` is open, and run them at once. `WATCH`, `UNWATCH` and `DISCARD`
/// too. In a pipeline, which goes whole on one connection, they run, and so
/// does `pipe().atomic()`. Nothing refused reached the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_sent_command_by_command_is_refused_and_a_pipeline_runs() {
    let server = RedisServer::start().await;
    let mut con = ours(&server.url());
    for command in ["MULTI", "exec", "DISCARD", "WATCH", "UNWATCH"] {
        let mut cmd = redis::cmd(command);
        if command == "WATCH" {
            cmd.arg("a");
        }
        let error = within(command, cmd.query_async::<redis::Value>(&mut con))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), redis::ErrorKind::Client, "{error:?}");
        assert_eq!(error.detail(), Some(command), "{error:?}");
        assert!(error.to_string().contains("pipe().atomic()"), "{error}");
    }
    let (a,): (i64,) = within(
        "an atomic pipeline",
        redis::pipe().atomic().incr("a", 1).query_async(&mut con),
    )
    .await
    .unwrap();
    assert_eq!(a, 1);
    let replies: Vec<redis::Value> = within(
        "MULTI … EXEC in one pipeline",
        redis::pipe()
            .cmd("MULTI")
            .incr("a", 1)
            .incr("b", 1)
            .cmd("EXEC")
            .query_async(&mut con),
    )
    .await
    .unwrap();
    assert_eq!(replies.len(), 4, "{replies:?}");
    assert_eq!(
        (server.counter("a").await, server.counter("b").await),
        (2, 1)
    );
    let stats = con.client().stats();
    assert_eq!((stats.dials, stats.drops), (1, 0), "{stats:?}");
}

/// `SELECT` and `RESET` are refused, alone and in a pipeline, before
/// anything is sent: the database the connection is on would reach every
/// clone's commands, and be lost unseen at the next redial. Writes stay on
/// the URL's database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_and_reset_are_refused_alone_and_in_a_pipeline() {
    let server = RedisServer::start().await;
    let mut con = ours(&server.url());
    for command in ["SELECT", "reset"] {
        let mut cmd = redis::cmd(command);
        if command == "SELECT" {
            cmd.arg(5);
        }
        let alone = within(command, cmd.query_async::<()>(&mut con))
            .await
            .unwrap_err();
        let piped = within(
            "a pipeline",
            redis::pipe()
                .set("k", 1)
                .add_command(cmd)
                .query_async::<()>(&mut con),
        )
        .await
        .unwrap_err();
        for error in [alone, piped] {
            assert_eq!(error.kind(), redis::ErrorKind::Client, "{error:?}");
            assert_eq!(error.detail(), Some(command), "{error:?}");
            assert!(error.to_string().contains("in the URL"), "{error}");
        }
    }
    assert_eq!(
        server.raw(&["EXISTS", "k"]).await,
        ":0\r\n",
        "the refused pipeline sent nothing"
    );
    let _: () = within("SET", con.set("after", 1)).await.unwrap();
    assert_eq!(server.raw(&["EXISTS", "after"]).await, ":1\r\n", "in db 0");
}

/// The database in the URL (`redis://host:port/3`) is selected on every
/// connection: after the connection is killed, commands still run on
/// database 3, and `get_db()` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_urls_database_holds_across_a_redial() {
    let server = RedisServer::start().await;
    let mut con = ours(&format!("{}3", server.url()));
    assert_eq!(redis::aio::ConnectionLike::get_db(&con), 3);
    let _: () = within("SET", con.set("before", 1)).await.unwrap();
    server.raw(&["CLIENT", "KILL", "TYPE", "normal"]).await;
    dropped(&con).await;
    let _: () = within("SET after", con.set("after", 1)).await.unwrap();
    assert_eq!(
        server.raw(&["EXISTS", "after"]).await,
        ":0\r\n",
        "not in db 0"
    );
    let in_3: i64 = within("EXISTS", con.exists("after")).await.unwrap();
    assert_eq!(in_3, 1);
}
