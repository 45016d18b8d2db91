//! `RedisManager` as a drop-in for redis-rs's `ConnectionManager`: the same
//! code, written as a `ConnectionManager` user writes it (the `app`
//! module), compiled and run against each, with only construction
//! differing (`drop_in_outage.rs` runs it through `kill -9`s); how it is
//! made; and pub/sub, which the drop-in refuses.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::AsyncCommands;
use support::redis_server::RedisServer;
use tokio::time::sleep;
use tower::ServiceBuilder;
use tower_redial::redis::{MakeRedis, RedisManager};
use tower_redial::ReconnectLayer;
use tower_redial_interop::redis_books::{deadline, policy};

/// Code written for `ConnectionManager`, as its users write it: generic
/// over redis-rs's `ConnectionLike`, with `AsyncCommands`, pipelines and a
/// script. Nothing here knows tower-redial.
pub(super) mod app {
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

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Ours: only this differs from the `ConnectionManager` form.
pub(super) fn ours(server: &RedisServer, wait_limit: Duration) -> RedisManager {
    let make = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(
            Duration::from_secs(1),
            wait_limit,
        )))
        .service(MakeRedis::new());
    RedisManager::new(&make, server.url()).expect("a valid URL")
}

pub(super) async fn theirs(server: &RedisServer) -> ConnectionManager {
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
