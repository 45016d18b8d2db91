//! The client composes like any tower service: in one `ServiceBuilder`
//! with tower's own layers (request-level layers before the bound
//! `ReconnectLayer`, dial-level ones after it), boxed as a
//! `BoxCloneSyncService`, under `steer` and tower's `retry`, and as shared
//! application state. Paused time; every await bounded.

use std::future::Future;
use std::time::Duration;

use tower::retry::Policy;
use tower::steer::Steer;
use tower::util::BoxCloneSyncService;
use tower::{service_fn, Layer, MakeService, Service, ServiceBuilder, ServiceExt};
use tower_redial::{BoxError, Client, ReconnectLayer, ReconnectPolicy};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

async fn within<F: Future>(limit: Duration, what: &str, future: F) -> F::Output {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within {limit:?}"))
}

/// A connection factory whose connections echo, taking as many
/// milliseconds as the request says.
fn make() -> impl Service<
    &'static str,
    Response = impl Service<u64, Response = u64, Error = BoxError, Future = impl Send>
                   + Clone
                   + Send
                   + Sync
                   + 'static,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    service_fn(|_: &'static str| async {
        Ok::<_, BoxError>(service_fn(|delay: u64| async move {
            tokio::time::sleep(ms(delay)).await;
            Ok::<_, BoxError>(delay)
        }))
    })
}

fn layer() -> ReconnectLayer {
    ReconnectLayer::new(ReconnectPolicy::default())
}

/// Layers before the bound `ReconnectLayer` wrap each request: a 100 ms
/// timeout cuts off a 300 ms request, and lets a 50 ms one through.
#[tokio::test(start_paused = true)]
async fn a_timeout_before_the_layer_bounds_each_request() {
    let client = ServiceBuilder::new()
        .timeout(ms(100))
        .layer(layer().target("db"))
        .service(make());
    let slow = within(ms(1000), "the slow request", client.clone().oneshot(300)).await;
    assert!(slow.unwrap_err().is::<tower::timeout::error::Elapsed>());
    let fast = within(ms(1000), "the fast request", client.clone().oneshot(50)).await;
    assert_eq!(fast.unwrap(), 50);
}

/// Layers after it wrap the factory: a timeout there bounds each dial, and
/// a dial that outlasts it fails and is redialed by the backoff.
#[tokio::test(start_paused = true)]
async fn a_timeout_after_the_layer_bounds_each_dial() {
    let slow_dial = service_fn(|_: &'static str| async {
        tokio::time::sleep(ms(500)).await;
        Ok::<_, BoxError>(service_fn(|n: u64| async move { Ok::<_, BoxError>(n) }))
    });
    let client: Client<u64, u64> = ServiceBuilder::new()
        .layer(layer().target("db"))
        .timeout(ms(100))
        .service(slow_dial);
    let mut state = client.state();
    let request = tokio::spawn(client.clone().oneshot(1));
    within(
        ms(10_000),
        "a failed dial",
        state.wait_for(|s| s.last_error().is_some()),
    )
    .await
    .unwrap();
    assert!(client.stats().dial_failures >= 1);
    request.abort();
}

/// The full stack of the README: load shedding, a concurrency limit, a
/// rate limit and a timeout per request, over the reconnecting client.
#[tokio::test(start_paused = true)]
async fn a_full_stack_in_one_builder() {
    let mut stack = ServiceBuilder::new()
        .map_err(|error: BoxError| format!("stack: {error}"))
        .load_shed()
        .concurrency_limit(1)
        .rate_limit(100, Duration::from_secs(1))
        .timeout(ms(500))
        .layer(layer().target("db"))
        .service(make());
    let reply = within(ms(1000), "ready", stack.ready())
        .await
        .unwrap()
        .call(10);
    let second = within(ms(1000), "ready", stack.ready())
        .await
        .unwrap()
        .call(10);
    assert!(
        second.await.unwrap_err().contains("overloaded"),
        "the limit of 1 sheds"
    );
    assert_eq!(within(ms(1000), "the reply", reply).await.unwrap(), 10);
}

/// The client boxes as a `BoxCloneSyncService`, directly or at the end of
/// a builder, and is shared state for any framework that needs
/// `Clone + Send + Sync + 'static` (axum's `State`, for one).
#[tokio::test(start_paused = true)]
async fn the_client_boxes_and_is_shared_state() {
    fn shared_state<S: Clone + Send + Sync + 'static>(_: &S) {}
    let client: Client<u64, u64> = layer().layer(make()).client("db");
    shared_state(&client);
    let boxed = BoxCloneSyncService::new(client.clone());
    assert_eq!(
        within(ms(1000), "boxed", boxed.oneshot(5)).await.unwrap(),
        5
    );
    let boxed = ServiceBuilder::new()
        .boxed_clone_sync()
        .layer(layer().target("db"))
        .service(make());
    shared_state(&boxed);
    assert_eq!(
        within(ms(1000), "built boxed", boxed.oneshot(6))
            .await
            .unwrap(),
        6
    );
}

/// `steer` picks between two reconnecting clients by request.
#[tokio::test(start_paused = true)]
async fn steer_picks_between_clients() {
    let even: Client<u64, u64> = layer().layer(make()).client("even");
    let odd: Client<u64, u64> = layer().layer(make()).client("odd");
    let steer = Steer::new(vec![even.clone(), odd.clone()], |n: &u64, _: &[_]| {
        (*n % 2) as usize
    });
    assert_eq!(
        within(ms(1000), "even", steer.clone().oneshot(4))
            .await
            .unwrap(),
        4
    );
    assert_eq!(within(ms(1000), "odd", steer.oneshot(3)).await.unwrap(), 3);
    assert_eq!((even.stats().dials, odd.stats().dials), (1, 1));
}

/// tower's own `Retry` works over the client, for the errors a user wants
/// retried at the application level.
#[tokio::test(start_paused = true)]
async fn tower_retry_over_the_client() {
    #[derive(Clone)]
    struct Twice(usize);
    impl Policy<u64, u64, BoxError> for Twice {
        type Future = std::future::Ready<()>;
        fn retry(
            &mut self,
            _: &mut u64,
            result: &mut Result<u64, BoxError>,
        ) -> Option<Self::Future> {
            (result.is_err() && self.0 > 0).then(|| {
                self.0 -= 1;
                std::future::ready(())
            })
        }
        fn clone_request(&mut self, request: &u64) -> Option<u64> {
            Some(*request)
        }
    }
    let flaky = service_fn(|_: &'static str| async {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        Ok::<_, BoxError>(service_fn(move |n: u64| {
            let first = calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
            async move {
                if first {
                    Err::<u64, BoxError>("the application said: try again".into())
                } else {
                    Ok(n)
                }
            }
        }))
    });
    let client = ServiceBuilder::new()
        .retry(Twice(2))
        .layer(layer().target("db"))
        .service(flaky);
    assert_eq!(
        within(ms(1000), "retried", client.oneshot(9))
            .await
            .unwrap(),
        9
    );
}

/// Uses any tower `MakeService` of `u64` services: knows nothing of this
/// crate.
async fn make_and_call<M>(make: &mut M, target: &'static str, request: u64) -> u64
where
    M: MakeService<&'static str, u64, Response = u64>,
    M::MakeError: std::fmt::Debug,
    M::Error: std::fmt::Debug,
{
    let client = make.make_service(target).await.unwrap();
    client.oneshot(request).await.unwrap()
}

/// Unbound, the layer's service is a tower `MakeService`: each target it
/// is called with gets its own client, which dials that target, lazily.
/// Both bindings (one request at a time, and multiplexed) work.
#[tokio::test(start_paused = true)]
async fn the_layer_makes_a_make_service_of_clients() {
    let dialed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let factory = {
        let dialed = dialed.clone();
        service_fn(move |target: &'static str| {
            dialed.lock().unwrap().push(target);
            async move {
                Ok::<_, BoxError>(service_fn(move |n: u64| async move {
                    Ok::<_, BoxError>(n + u64::from(target == "b"))
                }))
            }
        })
    };
    let make = ServiceBuilder::new().layer(layer()).service(factory);

    let mut clients = make.clone().into_make_service::<u64>();
    let mut multiplexed = make.into_make_multiplexed::<u64>();
    within(ms(1000), "calls through made clients", async {
        assert_eq!(make_and_call(&mut clients, "a", 1).await, 1);
        assert_eq!(make_and_call(&mut clients, "b", 1).await, 2);
        assert_eq!(make_and_call(&mut multiplexed, "b", 5).await, 6);
    })
    .await;
    assert_eq!(*dialed.lock().unwrap(), ["a", "b", "b"]);

    // Making a client dials nothing: it is lazy.
    let _idle = within(ms(1000), "making a client", clients.make_service("c"))
        .await
        .unwrap();
    tokio::time::sleep(ms(100)).await;
    assert_eq!(dialed.lock().unwrap().len(), 3);
}
