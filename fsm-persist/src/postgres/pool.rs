//! A small blocking connection pool: at most `max` connections, opened on demand, handed out
//! one caller at a time, each with its prepared statements.
//!
//! A connection that sat idle longer than `validate_after` is pinged before it is lent (one
//! empty query), so a server restart shows up as a clean reconnect rather than as a failed
//! write whose outcome is unknown. A connection that failed is closed, never lent again.

use crate::sync::Recover;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use fsm_core::store::StoreError;
use postgres::Client;

use super::error::{classify, Phase, BACKEND};
use super::sql::{Sql, Statements};

/// Opens one connection: the client's settings and TLS (or not), as the user chose.
pub(crate) type Connector = Arc<dyn Fn() -> Result<Client, postgres::Error> + Send + Sync>;

/// Pool settings.
#[derive(Clone, Debug)]
pub(crate) struct PoolConfig {
    pub(crate) max: usize,
    pub(crate) timeout: Duration,
    pub(crate) validate_after: Duration,
}

/// A connection and the store's statements prepared on it.
pub(crate) struct Conn {
    pub(crate) client: Client,
    pub(crate) statements: Statements,
    last_used: Instant,
}

struct State {
    idle: Vec<Conn>,
    open: usize,
}

pub(crate) struct Pool {
    connect: Connector,
    settings: PoolConfig,
    state: Mutex<State>,
    freed: Condvar,
}

impl Pool {
    pub(crate) fn new(connect: Connector, settings: PoolConfig) -> Pool {
        Pool {
            connect,
            settings,
            state: Mutex::new(State {
                idle: Vec::new(),
                open: 0,
            }),
            freed: Condvar::new(),
        }
    }

    /// How this pool opens connections, for another user of the same database.
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) fn connector(&self) -> Connector {
        self.connect.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().recover()
    }

    /// Lends a connection: an idle one (pinged first if it idled long), a new one if fewer
    /// than `max` are open, or the next one returned, waiting up to the pool timeout.
    pub(crate) fn get(&self, sql: &Sql) -> Result<Lent<'_>, StoreError> {
        let deadline = Instant::now() + self.settings.timeout;
        let mut state = self.lock();
        loop {
            if let Some(mut conn) = state.idle.pop() {
                if conn.last_used.elapsed() < self.settings.validate_after {
                    return Ok(self.lend(conn));
                }
                drop(state);
                if conn.client.simple_query("").is_ok() {
                    conn.last_used = Instant::now();
                    return Ok(self.lend(conn));
                }
                // Broken while idle (a server restart): close it, try the next.
                drop(conn);
                state = self.lock();
                state.open -= 1;
                continue;
            }
            if state.open < self.settings.max {
                state.open += 1;
                drop(state);
                return match self.connect(sql) {
                    Ok(conn) => Ok(self.lend(conn)),
                    Err(e) => {
                        self.lock().open -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable {
                    backend: BACKEND,
                    message: format!(
                        "all {} pooled connections stayed busy for {:?}; raise the pool size or the pool timeout",
                        self.settings.max, self.settings.timeout
                    ),
                });
            }
            state = self.freed.wait_timeout(state, deadline - now).recover().0;
        }
    }

    fn connect(&self, sql: &Sql) -> Result<Conn, StoreError> {
        let mut client = (self.connect)()
            .map_err(|e| classify(&e, Phase::NothingWritten).error)
            .map_err(|e| match e {
                // A refused connection is the server being away, whatever the client says.
                StoreError::Backend { message, .. } => StoreError::Unavailable {
                    backend: BACKEND,
                    message,
                },
                e => e,
            })?;
        let statements = Statements::prepare(&mut client, sql)
            .map_err(|e| classify(&e, Phase::NothingWritten).error)?;
        Ok(Conn {
            client,
            statements,
            last_used: Instant::now(),
        })
    }

    fn lend(&self, conn: Conn) -> Lent<'_> {
        Lent {
            pool: self,
            conn: Some(conn),
            broken: false,
        }
    }

    /// How many connections are open now (idle or lent).
    pub(crate) fn open(&self) -> usize {
        self.lock().open
    }
}

/// A lent connection; it goes back to the pool when dropped, unless it broke.
pub(crate) struct Lent<'a> {
    pool: &'a Pool,
    conn: Option<Conn>,
    broken: bool,
}

impl Lent<'_> {
    /// Marks the connection broken: it is closed instead of returned.
    pub(crate) fn discard(&mut self) {
        self.broken = true;
    }
}

impl Deref for Lent<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        self.conn
            .as_ref()
            .expect("a lent connection is present until dropped")
    }
}

impl DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        self.conn
            .as_mut()
            .expect("a lent connection is present until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        let mut state = self.pool.lock();
        if self.broken || conn.client.is_closed() {
            state.open -= 1;
            drop(state);
            drop(conn);
        } else {
            conn.last_used = Instant::now();
            state.idle.push(conn);
            drop(state);
        }
        self.pool.freed.notify_one();
    }
}
