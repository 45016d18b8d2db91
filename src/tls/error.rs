//! A TLS handshake failed.

use std::error::Error;
use std::fmt;
use std::io;

use rustls::pki_types::ServerName;

/// The TLS handshake of a dial failed: the server's certificate was not
/// trusted, named another host or had expired, the server sent an alert,
/// or the connection broke during the handshake.
///
/// [`source()`](Error::source) is rustls's own [`rustls::Error`] when rustls
/// reported one (taken out of the `io::Error` that tokio-rustls wraps it
/// in), else the `io::Error` itself. See the
/// [module docs](super#errors) for how the dial's error reaches a request.
///
/// # Example
///
/// ```
/// use std::error::Error;
/// use tower_redial::tls::{rustls, HandshakeError};
///
/// // What was wrong with the server's certificate, if that failed the dial.
/// fn certificate_problem<'a>(
///     error: &'a (dyn Error + 'static),
/// ) -> Option<&'a rustls::CertificateError> {
///     let handshake = error.downcast_ref::<HandshakeError>()?;
///     match handshake.source()?.downcast_ref::<rustls::Error>()? {
///         rustls::Error::InvalidCertificate(problem) => Some(problem),
///         _ => None,
///     }
/// }
/// # let _ = certificate_problem;
/// ```
#[derive(Debug)]
pub struct HandshakeError {
    server_name: String,
    source: Box<dyn Error + Send + Sync>,
}

impl HandshakeError {
    pub(crate) fn new(server_name: &ServerName<'_>, error: io::Error) -> Self {
        let source = if error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            error.into_inner().expect("checked above")
        } else {
            Box::new(error)
        };
        Self {
            server_name: server_name.to_str().into_owned(),
            source,
        }
    }

    /// The name the server's certificate was checked against.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "tls handshake with {} failed", self.server_name)
    }
}

impl Error for HandshakeError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&*self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustls_errors_come_out_of_their_io_error() {
        let name = ServerName::try_from("example.com").unwrap();
        let wrapped = io::Error::new(io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        let error = HandshakeError::new(&name, wrapped);
        assert_eq!(error.to_string(), "tls handshake with example.com failed");
        let source = error.source().unwrap();
        assert_eq!(
            source.downcast_ref::<rustls::Error>(),
            Some(&rustls::Error::DecryptError)
        );

        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let error = HandshakeError::new(&name, reset);
        let source = error.source().unwrap().downcast_ref::<io::Error>().unwrap();
        assert_eq!(source.kind(), io::ErrorKind::ConnectionReset);
    }
}
