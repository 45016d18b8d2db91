//! The name a server's certificate is checked against, taken from the target.

use std::error::Error;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use rustls::pki_types::ServerName;

/// A dial target that names the server it reaches: the name that
/// [`TlsConnector`](super::TlsConnector) sends as SNI and checks the
/// server's certificate against.
///
/// | target | server name |
/// |---|---|
/// | `"host:port"`, `String`, `(&str, u16)`, `(String, u16)` | `host`, or the IP address if `host` is one (`"[::1]:443"` too) |
/// | `SocketAddr`, `SocketAddrV4`, `SocketAddrV6`, `(IpAddr, u16)` and its v4/v6 forms | the IP address |
/// | `http::Uri` (with the `hyper` feature) | the URI's host |
/// | `&T` | as `T` |
///
/// A DNS name is sent as SNI; an IP address is not (TLS has no SNI for
/// addresses) and is checked against the certificate's IP address entries.
/// To dial an address and check a host name instead, set it with
/// [`TlsConnector::server_name`](super::TlsConnector::server_name), which
/// overrides this trait.
///
/// # Example
///
/// ```
/// use tower_redial::tls::TargetName;
///
/// let name = "example.com:443".server_name().unwrap();
/// assert_eq!(name.to_str(), "example.com");
/// let name = ("127.0.0.1".parse::<std::net::IpAddr>().unwrap(), 443).server_name().unwrap();
/// assert_eq!(name.to_str(), "127.0.0.1");
/// assert!("no port".server_name().is_err());
/// ```
pub trait TargetName {
    /// The server name of this target.
    ///
    /// # Errors
    ///
    /// [`InvalidServerName`] if the target names no valid DNS name or IP
    /// address.
    fn server_name(&self) -> Result<ServerName<'static>, InvalidServerName>;
}

/// A host that is no valid DNS name or IP address, or a target with no host.
///
/// # Example
///
/// ```
/// use tower_redial::tls::{TargetName, TlsConfig, TlsConnector};
/// use tower_redial::connect::TcpConnector;
///
/// let error = "bad_name!:443".server_name().unwrap_err();
/// assert_eq!(error.to_string(), "\"bad_name!\" is not a valid tls server name");
///
/// let config = TlsConfig::builder().webpki_roots().build().unwrap();
/// assert!(TlsConnector::new(TcpConnector::new(), config).server_name("").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidServerName {
    name: String,
}

impl InvalidServerName {
    /// The error for `name`, which is no DNS name or IP address.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into() }
    }

    /// The name that was refused.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Display for InvalidServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} is not a valid tls server name", self.name)
    }
}

impl Error for InvalidServerName {}

/// `name` as a server name: an IP address (bracketed or not) or a DNS name.
pub(crate) fn parse(name: &str) -> Result<ServerName<'static>, InvalidServerName> {
    let bare = name
        .strip_prefix('[')
        .and_then(|n| n.strip_suffix(']'))
        .unwrap_or(name);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(ServerName::from(ip));
    }
    ServerName::try_from(name)
        .map(|n| n.to_owned())
        .map_err(|_| InvalidServerName::new(name))
}

/// The host of `"host:port"`, or `"[v6]:port"`.
fn host_of(target: &str) -> Result<ServerName<'static>, InvalidServerName> {
    match target.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => parse(host),
        _ => Err(InvalidServerName::new(target)),
    }
}

impl TargetName for str {
    fn server_name(&self) -> Result<ServerName<'static>, InvalidServerName> {
        host_of(self)
    }
}

impl TargetName for String {
    fn server_name(&self) -> Result<ServerName<'static>, InvalidServerName> {
        host_of(self)
    }
}

impl TargetName for (&str, u16) {
    fn server_name(&self) -> Result<ServerName<'static>, InvalidServerName> {
        parse(self.0)
    }
}

impl TargetName for (String, u16) {
    fn server_name(&self) -> Result<ServerName<'static>, InvalidServerName> {
        parse(&self.0)
    }
}

macro_rules! by_address {
    ($($target:ty => |$t:ident| $ip:expr;)*) => {$(
        impl TargetName for $target {
            fn server_name(&self) -> Result<ServerName<'static>, InvalidServerName> {
                let $t = self;
                Ok(ServerName::from(IpAddr::from($ip)))
            }
        }
    )*};
}

by_address! {
    SocketAddr => |t| t.ip();
    SocketAddrV4 => |t| *t.ip();
    SocketAddrV6 => |t| *t.ip();
    (IpAddr, u16) => |t| t.0;
    (Ipv4Addr, u16) => |t| t.0;
    (Ipv6Addr, u16) => |t| t.0;
}

impl<T: TargetName + ?Sized> TargetName for &T {
    fn server_name(&self) -> Result<ServerName<'static>, InvalidServerName> {
        (**self).server_name()
    }
}

#[cfg(feature = "hyper")]
impl TargetName for http::Uri {
    fn server_name(&self) -> Result<ServerName<'static>, InvalidServerName> {
        match self.host() {
            Some(host) => parse(host),
            None => Err(InvalidServerName::new(self.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(target: impl TargetName) -> String {
        target.server_name().unwrap().to_str().into_owned()
    }

    #[test]
    fn each_target_gives_its_host() {
        assert_eq!(name("db.example:5432"), "db.example");
        assert_eq!(name("db.example:5432".to_string()), "db.example");
        assert_eq!(name(("db.example", 1)), "db.example");
        assert_eq!(name(("db.example".to_string(), 1)), "db.example");
        assert_eq!(name("127.0.0.1:1"), "127.0.0.1");
        assert_eq!(name("[::1]:1"), "::1");
        assert_eq!(name(SocketAddr::from(([10, 0, 0, 1], 1))), "10.0.0.1");
        assert_eq!(name((Ipv6Addr::LOCALHOST, 1)), "::1");
        let target = String::from("a.b:1");
        assert_eq!(name(&target), "a.b");
        assert!(matches!(
            "127.0.0.1:1".server_name().unwrap(),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn a_target_with_no_host_is_refused_by_name() {
        for bad in ["db.example", ":80", "db.example:http", "a b:1", "[::1:1"] {
            let error = bad.server_name().unwrap_err();
            assert!(
                error.to_string().contains("is not a valid tls server name"),
                "{bad}"
            );
        }
        assert_eq!(("a b", 1).server_name().unwrap_err().name(), "a b");
    }

    #[cfg(feature = "hyper")]
    #[test]
    fn a_uri_gives_its_host() {
        let uri: http::Uri = "https://api.example:8443/x".parse().unwrap();
        assert_eq!(name(uri), "api.example");
        let uri: http::Uri = "https://[::1]:8443/x".parse().unwrap();
        assert_eq!(name(uri), "::1");
        let uri: http::Uri = "/path".parse().unwrap();
        assert!(uri.server_name().is_err());
    }
}
