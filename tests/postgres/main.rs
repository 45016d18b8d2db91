//! PostgreSQL: a real server, its restarts, and the books of every insert.
#![cfg(feature = "postgres")]

mod client;
mod restart;

use support::pg_server::PgServer;

/// The test server's connection settings as tokio-postgres reads them.
trait Config {
    fn config(&self) -> tokio_postgres::Config;
}

impl Config for PgServer {
    fn config(&self) -> tokio_postgres::Config {
        self.conninfo().parse().expect("a valid connection string")
    }
}
