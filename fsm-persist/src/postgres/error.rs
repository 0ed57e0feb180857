//! What the PostgreSQL store answers when opening or an operation fails: each client error
//! sorted by what a caller can conclude from it.

use fsm_core::store::StoreError;

pub(crate) const BACKEND: &str = "postgres";

/// Why a [`PostgresStore`](super::PostgresStore) could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// A schema or table name that is not a plain identifier (names are never spliced into
    /// SQL unchecked).
    #[error("invalid {what} name {name:?}: {problem}")]
    InvalidName {
        /// `schema` or `table`.
        what: &'static str,
        /// The name given.
        name: String,
        /// What is wrong and what to write instead.
        problem: String,
    },
    /// Ownership settings that cannot work (no partitions, a lease too short for its
    /// heartbeat, a node name that is empty or too long, a claimed partition out of range).
    #[error("invalid ownership settings: {0}")]
    InvalidOwnership(String),
    /// The table exists with another layout than this store needs: written by a newer
    /// version, or with fencing on where this store has it off (or the other way round), or
    /// with another number of partitions. Every node of a deployment must agree.
    #[error("table {table} does not match this store: {problem}")]
    Layout {
        /// The table.
        table: String,
        /// What differs, and what to do.
        problem: String,
    },
    /// The pool's settings are unusable (zero connections).
    #[error("invalid pool settings: {0}")]
    InvalidPool(String),
    /// The connection's TLS failed: TLS is required and the server offers none, or its
    /// certificate is not signed by a trusted CA for the host connected to. Nothing was sent
    /// in plaintext.
    #[error("TLS refused: {0}; check that the server has `ssl = on` and that its certificate, for the host you connect to, is signed by the CA you trust")]
    Tls(String),
    /// The database could not be reached or refused to create the schema.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Whether a client error comes from the TLS layer: no TLS offered where it is required, or
/// a handshake that failed (a certificate refused).
pub(crate) fn is_tls_failure(e: &postgres::Error) -> bool {
    let text = e.to_string();
    text.contains("TLS") || text.contains("certificate")
}

/// Where an operation was when the client failed, which decides what the failure means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Nothing this call sent can be written by the server: a read, the statements of an
    /// explicit transaction before `COMMIT` (the server rolls an interrupted one back), or
    /// statements that only ask.
    NothingWritten,
    /// A write was sent that commits on its own (one autocommit statement, or `COMMIT`): if
    /// the connection breaks now, it may or may not be durable.
    Committing,
}

/// What a failed client call means for the caller, and whether its connection is broken.
pub(crate) struct Failure {
    pub(crate) error: StoreError,
    pub(crate) broken: bool,
}

/// Sorts a client error: a broken connection (I/O error, the server closing it, a FATAL or
/// connection-class error) is `Unavailable` before anything could be written and
/// `ConnectionLost` (outcome unknown) while a write was committing; an error the server
/// reports for a statement means the statement did not happen.
pub(crate) fn classify(e: &postgres::Error, phase: Phase) -> Failure {
    let connection = match e.as_db_error() {
        Some(db) => {
            let code = db.code().code();
            matches!(db.severity(), "FATAL" | "PANIC")
                || code.starts_with("08")
                || code.starts_with("57P")
        }
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        }
    };
    let error = match (connection, phase) {
        (true, Phase::Committing) => StoreError::ConnectionLost {
            backend: BACKEND,
            message: e.to_string(),
        },
        (true, Phase::NothingWritten) => StoreError::Unavailable {
            backend: BACKEND,
            message: e.to_string(),
        },
        (false, _) => StoreError::Backend {
            backend: BACKEND,
            message: match e.as_db_error() {
                Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
                None => e.to_string(),
            },
            outcome_unknown: false,
        },
    };
    Failure {
        error,
        broken: connection,
    }
}

/// A store error for something the database answered that this store cannot make sense of
/// (a missing partition row, a value out of range): the layout was changed by hand.
pub(crate) fn unexpected(message: impl Into<String>) -> StoreError {
    StoreError::Backend {
        backend: BACKEND,
        message: message.into(),
        outcome_unknown: false,
    }
}
