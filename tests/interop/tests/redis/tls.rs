//! `rediss://` through redis-rs's rustls support (the `redis-tls` feature),
//! against a real `redis-server --tls-port` with certificates that rcgen
//! makes afresh for each test: commands and pipelines go over TLS; an
//! untrusted certificate fails the dial, with rustls's error reachable from
//! `Unavailable::source()`; a restart with a new certificate is picked up
//! on the redial.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use redis::{AsyncCommands, ConnectionInfo, RedisError, TlsCertificates};
use support::redis_server::{RedisServer, TlsFiles};
use tokio::time::sleep;
use tower::ServiceBuilder;
use tower_redial::error::Unavailable;
use tower_redial::redis::{client_error, MakeRedis, RedisManager};
use tower_redial::ReconnectLayer;
use tower_redial_interop::redis_books::{deadline, policy};

/// A certificate authority, made afresh.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// A CA named `name`: CAs of different names do not vouch for each
    /// other's certificates.
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A new key, and a certificate for 127.0.0.1 signed by this CA, written
    /// over `files`.
    fn issue_into(&self, files: &TlsFiles) {
        let params = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        std::fs::write(&files.ca, &self.pem).unwrap();
    }
}

/// A temporary directory for the server's files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-redial-tls-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn files(&self) -> TlsFiles {
        let at = |name: &str| Path::new(&self.0).join(name);
        TlsFiles {
            cert: at("server.crt"),
            key: at("server.key"),
            ca: at("ca.crt"),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The target: the server's `rediss://` URL, trusting `ca` alone.
fn trusting(server: &RedisServer, ca: &Ca) -> ConnectionInfo {
    let certificates = TlsCertificates {
        client_tls: None,
        root_cert: Some(ca.pem.clone().into_bytes()),
    };
    redis::Client::build_with_tls(server.tls_url(), certificates)
        .expect("a TLS client")
        .get_connection_info()
        .clone()
}

fn drop_in(target: ConnectionInfo, wait_limit: Duration) -> RedisManager {
    let make = ServiceBuilder::new()
        .layer(ReconnectLayer::new(policy(
            Duration::from_secs(1),
            wait_limit,
        )))
        .service(MakeRedis::new());
    RedisManager::new(&make, target).expect("a valid target")
}

/// rustls's error in `error`'s chain, through the `Arc` and `io::Error`
/// that redis-rs wraps it in.
fn rustls_error<'a>(error: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    std::iter::successors(Some(error), |e: &&'a (dyn Error + 'static)| (*e).source()).find_map(
        |e| {
            let io = e.downcast_ref::<std::io::Error>().or_else(|| {
                e.downcast_ref::<Arc<dyn Error + Send + Sync>>()
                    .and_then(|shared| shared.downcast_ref::<std::io::Error>())
            });
            e.downcast_ref::<rustls::Error>()
                .or_else(|| io?.get_ref()?.downcast_ref::<rustls::Error>())
                .or_else(|| {
                    let redis = io?.get_ref()?.downcast_ref::<RedisError>()?;
                    rustls_error(redis)
                })
        },
    )
}

/// The `Unavailable` of a command that failed fast, once one does: the
/// commands before it may fail as sent on the connection that died.
async fn until_unavailable(con: &mut RedisManager) -> RedisError {
    deadline("a command to fail fast", async {
        loop {
            match con.incr::<_, _, i64>("n", 1).await {
                Err(error) if client_error(&error).is_some_and(|e| e.is::<Unavailable>()) => {
                    return error;
                }
                Err(error) => assert!(error.is_io_error(), "{error:?}"),
                Ok(n) => panic!("answered {n}"),
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Commands, a transaction and a script go over TLS to the server's TLS
/// port, with the test's CA as the only root.
#[tokio::test]
async fn commands_go_over_tls() {
    let dir = Dir::new("ok");
    let ca = Ca::new("test CA");
    ca.issue_into(&dir.files());
    let server = RedisServer::start_tls(&dir.files()).await;
    let mut con = drop_in(trusting(&server, &ca), Duration::from_secs(1));
    let n: i64 = deadline("an INCR", con.incr("n", 1)).await.unwrap();
    assert_eq!(n, 1);
    let (a, b): (i64, i64) = deadline(
        "a transaction",
        redis::pipe()
            .atomic()
            .incr("n", 1)
            .incr("n", 1)
            .query_async(&mut con),
    )
    .await
    .unwrap();
    assert_eq!((a, b), (2, 3));
    assert_eq!(server.counter("n").await, 3);
    let stats = con.client().stats();
    assert_eq!((stats.dials, stats.dial_failures), (1, 0), "{stats:?}");
}

/// A server whose certificate no trusted CA signed fails every dial: past
/// the wait limit commands fail fast with `Unavailable`, whose `source()`
/// is the dial's error, shown as rustls shows its own, with rustls's error
/// itself in its chain. Nothing ran.
#[tokio::test]
async fn an_untrusted_certificate_fails_the_dial_with_rustls_error() {
    let dir = Dir::new("untrusted");
    Ca::new("the server's CA").issue_into(&dir.files());
    let server = RedisServer::start_tls(&dir.files()).await;
    let trusted = Ca::new("the client's CA");
    let mut con = drop_in(trusting(&server, &trusted), Duration::from_millis(300));

    let error = until_unavailable(&mut con).await;
    let unavailable = client_error(&error).unwrap().downcast_ref::<Unavailable>();
    let cause = unavailable.unwrap().source().expect("the last dial error");
    let rustls = rustls_error(cause).expect("rustls's error in the chain");
    assert!(
        matches!(
            rustls,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{rustls:?}"
    );
    assert_eq!(cause.to_string(), rustls.to_string());
    println!("{error}\n  caused by: {cause}");
    assert_eq!(server.counter("n").await, 0);
    let stats = con.client().stats();
    assert!(stats.dial_failures >= 1 && stats.drops == 0, "{stats:?}");
}

/// The server is restarted with a certificate from a CA the client does not
/// trust, then with a new one (a new key) from the one it trusts. Each is
/// picked up on the redial: the first fails the dials with rustls's
/// `UnknownIssuer`, the second serves again.
#[tokio::test]
async fn a_restart_with_a_new_certificate_is_picked_up_on_the_redial() {
    let dir = Dir::new("rotate");
    let (trusted, other) = (Ca::new("trusted"), Ca::new("other"));
    trusted.issue_into(&dir.files());
    let mut server = RedisServer::start_tls(&dir.files()).await;
    let mut con = drop_in(trusting(&server, &trusted), Duration::from_millis(300));
    let n: i64 = deadline("an INCR", con.incr("n", 1)).await.unwrap();
    assert_eq!(n, 1);

    server.kill().await;
    other.issue_into(&dir.files());
    server.restart().await;
    let error = until_unavailable(&mut con).await;
    let cause = client_error(&error)
        .and_then(|e| e.downcast_ref::<Unavailable>())
        .and_then(|e| e.source())
        .expect("the last dial error");
    assert!(
        matches!(
            rustls_error(cause),
            Some(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer
            ))
        ),
        "{cause:?}"
    );

    server.kill().await;
    trusted.issue_into(&dir.files());
    server.restart().await;
    let n: i64 = deadline("an INCR on the new certificate", async {
        loop {
            match con.incr("n", 1).await {
                Ok(n) => return n,
                Err(error) => assert!(error.is_io_error(), "{error:?}"),
            }
            sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(n, 1, "answered by the restarted server, which kept nothing");
    let stats = con.client().stats();
    println!("{stats:?}");
    assert!(stats.dial_failures >= 1, "{stats:?}");
    assert_eq!(server.starts(), 3);
}
