//! A query, and the rows it returns.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use ::tokio_postgres::types::ToSql;
use ::tokio_postgres::Row;

/// One request: a SQL statement and its parameters, owned, so that it can
/// wait in a queue and be re-sent.
///
/// [`Query::new`] runs one statement with the extended protocol: it is
/// prepared, then executed with the parameters bound with [`Query::bind`]
/// (`$1`, `$2`, ...). [`Query::prepared`] keeps the prepared statement on the
/// connection for the next time (see
/// [Prepared statements](super#prepared-statements)). [`Query::batch`] runs
/// one or more statements, with no parameters, in one simple-query message.
///
/// # Clone
///
/// Cloning is cheap: the text and the parameters are shared.
///
/// # Example
///
/// ```
/// use tower_redial::postgres::Query;
///
/// let insert = Query::new("INSERT INTO users (id, name) VALUES ($1, $2)")
///     .bind(7_i64)
///     .bind("ada");
/// assert!(!insert.is_idempotent());
///
/// let read = Query::new("SELECT name FROM users WHERE id = $1").bind(7_i64).idempotent();
/// assert!(read.is_idempotent());
/// ```
#[derive(Clone)]
pub struct Query {
    pub(super) sql: Arc<str>,
    pub(super) params: Vec<Param>,
    pub(super) kind: Kind,
    /// Whether the prepared statement is kept in the connection's cache.
    pub(super) prepared: bool,
    idempotent: bool,
}

pub(super) type Param = Arc<dyn ToSql + Send + Sync>;

#[derive(Clone)]
pub(super) enum Kind {
    /// Prepare, then bind and execute.
    Statement,
    /// The simple-query protocol: one or more statements, no parameters.
    Batch,
    /// `BEGIN`, the closure, `COMMIT`: made by `PgClient::transaction`.
    Transaction(super::transaction::Body),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::Statement => "statement",
            Kind::Batch => "batch",
            Kind::Transaction(_) => "transaction",
        }
    }
}

impl Query {
    /// One SQL statement, with parameters `$1`, `$2`, ... to be bound in
    /// order with [`bind`](Query::bind).
    pub fn new(sql: impl Into<Arc<str>>) -> Self {
        Self {
            sql: sql.into(),
            params: Vec::new(),
            kind: Kind::Statement,
            prepared: false,
            idempotent: false,
        }
    }

    /// One or more SQL statements separated by `;`, sent as one simple-query
    /// message: for DDL, and for a whole transaction
    /// (`"BEGIN; ...; COMMIT"`). A batch takes no parameters and returns no
    /// rows.
    pub fn batch(sql: impl Into<Arc<str>>) -> Self {
        Self {
            kind: Kind::Batch,
            ..Self::new(sql)
        }
    }

    /// Binds the next parameter: the first call binds `$1`, the next `$2`.
    ///
    /// # Panics
    ///
    /// If the query is a [`batch`](Query::batch), which takes no parameters.
    pub fn bind<T>(mut self, value: T) -> Self
    where
        T: ToSql + Send + Sync + 'static,
    {
        assert!(
            matches!(self.kind, Kind::Statement),
            "Query::bind: a batch takes no parameters"
        );
        self.params.push(Arc::new(value));
        self
    }

    /// Keeps the statement prepared on the connection: the first run
    /// prepares it, later runs on the same connection execute it at once,
    /// saving the `Parse` round trip. After a redial the new connection
    /// prepares it again, unasked. See
    /// [Prepared statements](super#prepared-statements).
    ///
    /// # Panics
    ///
    /// If the query is a [`batch`](Query::batch), which the server does not
    /// prepare.
    ///
    /// # Example
    ///
    /// ```
    /// use tower_redial::postgres::Query;
    ///
    /// let by_id = Query::new("SELECT name FROM users WHERE id = $1").prepared().bind(7_i64);
    /// assert!(by_id.is_prepared());
    /// assert!(!Query::new("SELECT 1").is_prepared());
    /// ```
    pub fn prepared(mut self) -> Self {
        assert!(
            matches!(self.kind, Kind::Statement),
            "Query::prepared: a batch is not prepared"
        );
        self.prepared = true;
        self
    }

    /// Whether the query keeps its statement prepared on the connection; see
    /// [`prepared`](Query::prepared).
    pub fn is_prepared(&self) -> bool {
        self.prepared
    }

    /// Marks the query as safe to run twice, such as a read. Only a client
    /// built with `.resend_if(Query::is_idempotent)` acts on it; see
    /// [At most once](super#at-most-once).
    pub fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    /// Whether the query was marked [`idempotent`](Query::idempotent). Pass
    /// it to [`ReconnectLayer::resend_if`](crate::ReconnectLayer::resend_if).
    pub fn is_idempotent(&self) -> bool {
        self.idempotent
    }

    /// The SQL text (empty for a [transaction](crate::Client::transaction)).
    pub fn sql(&self) -> &str {
        &self.sql
    }

    /// How many parameters are bound.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }
}

/// Shows the SQL text and how many parameters are bound, never their values,
/// which may be secrets.
impl fmt::Debug for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Query")
            .field("sql", &self.sql)
            .field("params", &self.params.len())
            .field("kind", &self.kind.name())
            .field("prepared", &self.prepared)
            .field("idempotent", &self.idempotent)
            .finish()
    }
}

/// The answer to a [`Query`]: the rows it returned, and the count from its
/// command tag.
#[derive(Default)]
pub struct Rows {
    pub(super) rows: Vec<Row>,
    pub(super) rows_affected: u64,
    /// What a transaction's closure returned.
    pub(super) value: Option<Box<dyn Any + Send>>,
}

impl fmt::Debug for Rows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rows")
            .field("rows", &self.rows)
            .field("rows_affected", &self.rows_affected)
            .finish_non_exhaustive()
    }
}

impl Rows {
    /// The number of rows the statement inserted, updated, deleted, copied or
    /// returned, as reported by the server. 0 for a [`batch`](Query::batch).
    pub fn rows_affected(&self) -> u64 {
        self.rows_affected
    }

    /// The rows returned.
    pub fn as_slice(&self) -> &[Row] {
        &self.rows
    }

    /// The first row returned, if any.
    pub fn first(&self) -> Option<&Row> {
        self.rows.first()
    }

    /// How many rows were returned.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no rows were returned.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// Iterates over the rows returned.
    pub fn iter(&self) -> std::slice::Iter<'_, Row> {
        self.rows.iter()
    }

    /// The rows returned, by value.
    pub fn into_vec(self) -> Vec<Row> {
        self.rows
    }
}

impl IntoIterator for Rows {
    type Item = Row;
    type IntoIter = std::vec::IntoIter<Row>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.into_iter()
    }
}

impl<'a> IntoIterator for &'a Rows {
    type Item = &'a Row;
    type IntoIter = std::slice::Iter<'a, Row>;

    fn into_iter(self) -> Self::IntoIter {
        self.rows.iter()
    }
}
