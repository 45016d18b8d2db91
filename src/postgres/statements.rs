//! The connection's prepared statements, kept by SQL text.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use ::tokio_postgres::Statement;

/// The statements of [`Query::prepared`](super::Query::prepared) queries that
/// one connection has prepared, by SQL text. It lives and dies with the
/// connection: a new connection starts empty, and prepares each statement
/// again the first time it runs. The server closes them when the session
/// ends.
#[derive(Default)]
pub(super) struct Statements {
    by_sql: Mutex<HashMap<Arc<str>, Statement>>,
}

impl Statements {
    /// The statement prepared for `sql`, if there is one.
    pub(super) fn get(&self, sql: &str) -> Option<Statement> {
        self.lock().get(sql).cloned()
    }

    /// Keeps `statement`, prepared for `sql`, unless another run prepared it
    /// first: that one stays, and `statement` is closed when its last user
    /// drops it.
    pub(super) fn keep(&self, sql: &Arc<str>, statement: &Statement) {
        self.lock()
            .entry(sql.clone())
            .or_insert_with(|| statement.clone());
    }

    /// Drops the statement kept for `sql`: the next run prepares it again.
    /// (Should another run have prepared it again already, that one goes:
    /// one more prepare, no harm.)
    pub(super) fn evict(&self, sql: &str) {
        self.lock().remove(sql);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Statement>> {
        self.by_sql.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
