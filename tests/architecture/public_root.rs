//! The crate root holds what every user needs, and nothing else: the
//! layer, `MakeReconnect`, `Client`, the policy and its builder, `Backoff`
//! and `Jitter`, and `BoxError`. Everything else is reached through its
//! module, by one path only.

use std::collections::BTreeSet;

const LIB: &str = include_str!("../../src/lib.rs");

/// The names `src/lib.rs` re-exports at the root.
fn root_exports() -> BTreeSet<String> {
    LIB.lines()
        .filter_map(|line| line.strip_prefix("pub use crate::"))
        .flat_map(|path| {
            let path = path.trim_end_matches(';');
            let (_, names) = path.split_once("::").expect("a module path");
            names
                .trim_matches(|c| c == '{' || c == '}')
                .split(',')
                .map(|name| name.trim().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[test]
fn the_root_exports_the_essentials_only() {
    let expected: BTreeSet<String> = [
        "Backoff",
        "Client",
        "Jitter",
        "MakeReconnect",
        "ReconnectLayer",
        "ReconnectPolicy",
        "ReconnectPolicyBuilder",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(root_exports(), expected);
    assert!(LIB.contains("pub type BoxError ="));
}

/// No public module re-exports what another public module holds: each item
/// has one path.
#[test]
fn each_item_is_listed_once() {
    let public: Vec<&str> = LIB
        .lines()
        .filter_map(|line| line.strip_prefix("pub mod "))
        .map(|name| name.trim_end_matches(';'))
        .collect();
    for file in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/src"))
        .unwrap()
        .flat_map(|entry| {
            let path = entry.unwrap().path();
            if path.is_dir() {
                std::fs::read_dir(&path)
                    .unwrap()
                    .map(|e| e.unwrap().path())
                    .collect()
            } else {
                vec![path]
            }
        })
        .filter(|path| path.extension().is_some_and(|e| e == "rs") && !path.ends_with("lib.rs"))
    {
        let text = std::fs::read_to_string(&file).unwrap();
        for line in text
            .lines()
            .filter(|l| l.trim_start().starts_with("pub use crate::"))
        {
            let module = line.trim_start()["pub use crate::".len()..]
                .split("::")
                .next()
                .unwrap();
            assert!(
                !public.contains(&module),
                "{}: `{line}` re-exports from the public module `{module}`",
                file.display()
            );
        }
    }
}

/// The items that left the root are where the docs say: the compiler
/// checks this test, which fails to build if one of the paths is wrong.
#[test]
fn moved_items_are_reached_through_their_modules() {
    #[allow(unused_imports)]
    use tower_redial::{
        bind::{Binding, Multiplexed, MultiplexedTargetLayer, OneAtATime, TargetLayer},
        classify::Classifier,
        client::ClientFuture,
        connect::{
            CloseWatch, Framed, FramedFuture, Handshake, HandshakeFuture, TcpConnecting,
            TcpConnector,
        },
        dial::{Dial, DialLayer},
        error::{
            Closed, ConnectTimeout, ConnectionLost, DialError, InvalidPolicy, NotSent, Overloaded,
            Panicked, ResponseTimeout, Unavailable,
        },
        make::MakeClient,
        probe::{IdleProbe, IdleProbeLayer},
        reconnect::{Reconnect, ResponseFuture},
        retry::{AtMostOnce, ResendIf, ResendPolicy},
        state::{Phase, Snapshot, Stats},
    };
}
