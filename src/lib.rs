//! Keep a tower client connected.
//!
//! `tower-redial` wraps a connection factory (a tower [`MakeService`]) and
//! turns it into a [`Client`]: a cheap, `Clone`able service that
//!
//! - dials lazily, on the first request (or at once, with
//!   [`Client::connected`]);
//! - re-makes the connection when it breaks, following a backoff
//!   [policy](ReconnectPolicy);
//! - holds requests in a bounded queue (tower's [`Buffer`]) while it redials,
//!   and fails them fast with [`Unavailable`] once the outage outlasts the
//!   wait limit;
//! - re-sends a request (through tower's [`Retry`]) only when that is safe:
//!   by default, only when it provably never reached a connection.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_redial::{BoxError, ReconnectLayer, ReconnectPolicy};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! // A connection factory: given a target, make a connection service. Here a
//! // toy one; in real use a TCP connector plus a handshake (see `Handshake`).
//! let make_connection = service_fn(|target: &'static str| async move {
//!     let connection = service_fn(move |name: String| async move {
//!         Ok::<_, BoxError>(format!("hello {name} from {target}"))
//!     });
//!     Ok::<_, BoxError>(connection)
//! });
//!
//! let maker = ServiceBuilder::new()
//!     .layer(ReconnectLayer::new(ReconnectPolicy::default()))
//!     .service(make_connection);
//!
//! // Bind a client to its target. Nothing is dialed until the first request.
//! let client = maker.client("db-1");
//!
//! let reply = client.clone().oneshot("ada".to_string()).await?;
//! assert_eq!(reply, "hello ada from db-1");
//! # Ok(())
//! # }
//! ```
//!
//! # Binding a client to its target
//!
//! [`ReconnectLayer`] wraps the factory in a [`MakeReconnect`].
//! [`MakeReconnect::client`] binds it to one target and returns a [`Client`].
//! The target is kept and handed to the factory again on every dial, so the
//! factory resolves it afresh each time: a DNS change is followed on the next
//! dial. Each client has its own connection, queue and worker task; make one
//! client per endpoint and clone it freely between tasks.
//!
//! For a connection that carries many requests at once and whose clones
//! share it (HTTP/2, redis's multiplexed connection), bind the client with
//! [`MakeReconnect::multiplexed`] instead: once the connection has proved
//! healthy, each handle calls it directly, and the queue and worker carry
//! requests only while the connection is being made.
//!
//! # The contract
//!
//! - **Readiness.** [`Client::poll_ready`](tower::Service::poll_ready) waits
//!   for room in the queue, never for the connection. Requests wait in the
//!   queue while the connection is redialed. (A [`multiplexed`] client
//!   whose connection is up polls the connection's own readiness instead.)
//!   `poll_ready` fails only once the client is [`Closed`] for good. The inner [`Reconnect`] service, as used
//!   on its own (for example under `tower::balance`), is `Pending` while it
//!   redials and never fakes readiness.
//! - **Outages.** The first redial after a healthy connection drops is
//!   immediate; later dials follow the backoff schedule, each due a delay
//!   after the start of the dial that failed. Every dial has a connect
//!   timeout. Once the connection has been unavailable for longer than the
//!   wait limit, requests fail fast with [`Unavailable`] between dials,
//!   with the latest dial error as its `source()`; a request that arrives
//!   while a dial is in flight waits for that dial, and is served if it
//!   succeeds (gRPC's CONNECTING and TRANSIENT_FAILURE).
//! - **Without traffic.** Once used, a client keeps its connection up by
//!   itself. Each client has a task of its own, which runs tower's
//!   `Buffer` worker and, beside it, a driver: whenever a timer, a dial or
//!   the connection wakes the task, the driver moves the state machine on,
//!   with no request needed. Dials, backoff, connect timeouts and the wait
//!   limit all advance with zero requests, and an idle connection's death
//!   is noticed and redialed at once, so the first request after a quiet
//!   outage finds a connection up. A connection tells the client it has
//!   closed through its `poll_ready`; see
//!   [`CloseWatch`](connect::CloseWatch) for what your own connection must
//!   do. The crate's hyper, redis and PostgreSQL connections do it.
//! - **At most once.** A request is re-sent only when the connection handed
//!   it back as [`NotSent`], unless you opt in with
//!   [`ReconnectLayer::resend_if`]. Re-sends are bounded by an attempt limit
//!   and a retry budget with the accounting of tower's
//!   [`TpsBudget`](tower::retry::budget::TpsBudget).
//! - **Errors.** See [`error`] for every error and when it happens, and
//!   [`classify`] for which errors mean "the connection is dead".
//! - **Panics in your code.** A panic in the factory, a dial, a handshake,
//!   or the connection's `poll_ready`, `call` or response future is caught
//!   where it happens: the requests it touched fail with [`Panicked`], the
//!   connection counts as dead, and the client redials by its backoff.
//! - **Composition.** [`ReconnectLayer::target`] binds the layer to its
//!   target, so that the layer's service is the [`Client`]: in one
//!   `ServiceBuilder`, layers before it wrap each request and layers after
//!   it wrap each dial. See [`TargetLayer`]. Unbound, the layer's service
//!   ([`MakeReconnect`]) turns into a tower [`MakeService`] of clients
//!   with [`MakeReconnect::into_make_service`]; see [`make`].
//! - **Shutdown.** Dropping every clone of a client ends its task, and
//!   with it any dial in flight, and closes its connection.
//!
//! The defaults are listed on [`ReconnectPolicy`].
//!
//! # Where things are
//!
//! The crate root holds what every user needs: [`ReconnectLayer`],
//! [`MakeReconnect`], [`Client`], [`ReconnectPolicy`] and its builder,
//! [`Backoff`] and [`Jitter`], and [`BoxError`]. Everything else is reached
//! through its module, by one path only: the errors in [`error`], what
//! counts as a dead connection in [`classify`], connectors and connections
//! in [`connect`] (with their futures), the client's state in [`state`],
//! re-sends in [`retry`], binding to a target in [`bind`] and [`make`], the
//! client's response future in [`client`], and the bare state machine and
//! its response future in [`reconnect`].
//!
//! # Beyond one connection
//!
//! - [`dial`]: [`DialLayer`] adds dial backoff, a connect timeout and an
//!   attempt or time limit to a raw connector, for clients that keep their
//!   own pool, such as hyper-util's legacy `Client`.
//! - [`probe`]: [`IdleProbe`] sends a cheap request after an idle period
//!   and marks the connection dead if it goes unanswered, for peers that
//!   vanish without a kernel error (a blackhole).
//! - [`connect`]: [`Handshake`] turns a connector plus a handshake into a
//!   connection factory; [`TcpConnector`](connect::TcpConnector) sets
//!   `TCP_NODELAY`, keepalive and `TCP_USER_TIMEOUT`.
//! - `tls` (feature `tls`): a rustls handshake over any connector, for
//!   HTTP/1, HTTP/2, tonic and your own protocols.
//! - The integrations: `hyper` (HTTP/1 and HTTP/2, and `hyper::grpc`, a
//!   one-line tonic transport), `redis` (`RedisManager`, a drop-in for
//!   redis-rs's `ConnectionManager`) and `postgres` (queries, transactions
//!   and prepared statements): see the features below.
//!
//! # Cargo features
//!
//! | feature | adds |
//! |---|---|
//! | `balance` | `balance`: one client over several reconnecting endpoints, with tower's p2c balancer |
//! | `hyper` | `hyper`: HTTP/1 and HTTP/2 connections over hyper's `client::conn` (and, through them, tonic) |
//! | `redis` | `redis`: the `redis` crate's multiplexed connection as a connection service, and `RedisManager`, the drop-in for its `ConnectionManager` |
//! | `redis-tls` | `rediss://` targets for `redis`, through redis-rs's rustls support (ring provider) |
//! | `postgres` | `postgres`: a `tokio-postgres` client as a connection service |
//! | `tls` | `tls`: TLS over any connector with rustls (its `ring` provider), roots from `webpki-roots` or your own, client certificates |
//! | `tls-native-roots` | `tls`, and the platform's root certificates (`rustls-native-certs`) |
//!
//! None is on by default.
//!
//! [`MakeService`]: tower::MakeService
//! [`Handshake`]: connect::Handshake
//! [`DialLayer`]: dial::DialLayer
//! [`Closed`]: error::Closed
//! [`NotSent`]: error::NotSent
//! [`Panicked`]: error::Panicked
//! [`Unavailable`]: error::Unavailable
//! [`IdleProbe`]: probe::IdleProbe
//! [`Reconnect`]: reconnect::Reconnect
//! [`TargetLayer`]: bind::TargetLayer
//! [`multiplexed`]: MakeReconnect::multiplexed
//! [`Buffer`]: tower::buffer::Buffer
//! [`Retry`]: tower::retry::Retry

#![warn(
    missing_docs,
    missing_debug_implementations,
    rust_2018_idioms,
    unreachable_pub
)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod backoff;
#[cfg(feature = "balance")]
#[cfg_attr(docsrs, doc(cfg(feature = "balance")))]
pub mod balance;
pub mod bind;
mod boxed;
mod budget;
pub mod classify;
pub mod client;
mod close;
pub mod connect;
pub mod dial;
mod driver;
pub mod error;
mod failed;
#[cfg(feature = "balance")]
mod failfast;
mod health;
#[cfg(feature = "hyper")]
#[cfg_attr(docsrs, doc(cfg(feature = "hyper")))]
pub mod hyper;
mod lane;
mod layer;
pub mod make;
mod panic;
mod policy;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
pub mod probe;
pub mod reconnect;
mod redact;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
pub mod retry;
pub mod state;
mod sync;
mod timer;
#[cfg(feature = "tls")]
#[cfg_attr(docsrs, doc(cfg(feature = "tls")))]
pub mod tls;

pub use crate::backoff::{Backoff, Jitter};
pub use crate::client::Client;
pub use crate::layer::{MakeReconnect, ReconnectLayer};
pub use crate::policy::{ReconnectPolicy, ReconnectPolicyBuilder};

/// The boxed error type used at the crate's boundaries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
