//! The store's SQL: validated names, the schema, and every statement, prepared once per
//! connection.
//!
//! Three tables per store, all named after the snapshot table `T`:
//! - `T (id text primary key, seq bigint, epoch bigint, snapshot bytea, state text,
//!   state_seq bigint)`: one row per machine, its newest snapshot, the sequence it holds, the
//!   epoch it was written under, and the state name the snapshot records with the sequence it
//!   was recorded for (a row written by an older version, which sets neither, reads as
//!   unrecorded, never as a stale state); indexed by `(state, id)` and by `id` in byte order
//!   (`COLLATE "C"`) for the queries by state and the listing's keyset paging;
//! - `T_owners (partition int primary key, epoch bigint, owner text, lease_until timestamptz,
//!   acquired_at timestamptz)`: with fencing, one row per partition of the id space;
//! - `T_meta (key text primary key, value text)`: the layout version and the fencing mode,
//!   which every node opening the table must agree with;
//!
//! and `T_refuse(reason)`, a PL/pgSQL function that raises SQLSTATE [`REFUSED`], with which the
//! batch statement aborts itself when one of its compare-and-sets fails.
//!
//! Every write of a fenced store locks its partitions' owner rows `FOR SHARE` and writes only
//! if they hold the writer's epoch. A takeover updates an owner row, which waits for those
//! share locks, so every write either commits before the takeover (and the new owner reads
//! it) or sees the new epoch and writes nothing.

use postgres::{Client, Statement};

use super::error::OpenError;

/// Longest PostgreSQL identifier, in bytes.
const MAX_IDENTIFIER: usize = 63;
/// The longest suffix added to the table name (`_owners`, `_refuse`).
const LONGEST_SUFFIX: usize = "_owners".len();

/// The SQLSTATE the batch statement aborts with when a compare-and-set of the batch fails.
pub(crate) const REFUSED: &str = "FS001";

/// The layout this version writes and reads.
pub(crate) const LAYOUT: &str = "1";

/// Checks a schema or table name: a plain lower-case identifier, so it can be quoted and
/// spliced into SQL with nothing to escape.
pub(crate) fn check_name(what: &'static str, name: &str, max: usize) -> Result<(), OpenError> {
    let problem = if name.is_empty() {
        Some("it is empty".to_owned())
    } else if name.len() > max {
        Some(format!("it is longer than {max} bytes"))
    } else if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        Some("it must start with a lower-case letter or `_`".to_owned())
    } else if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        Some(format!("{c:?} is not allowed"))
    } else if name.starts_with("pg_") {
        Some("names starting with `pg_` are reserved by PostgreSQL".to_owned())
    } else {
        None
    };
    match problem {
        None => Ok(()),
        Some(problem) => Err(OpenError::InvalidName {
            what,
            name: name.to_owned(),
            problem: format!(
                "{problem}; use 1 to {max} of a-z, 0-9 and `_`, starting with a letter or `_`"
            ),
        }),
    }
}

/// The statements' text, built once per store from its validated names.
#[derive(Debug)]
pub(crate) struct Sql {
    pub(crate) table: String,
    /// The schema and the snapshot table's name, unquoted (validated identifiers).
    #[cfg_attr(not(feature = "cluster"), allow(dead_code))]
    pub(crate) names: (String, String),
    pub(crate) lock_key: String,
    pub(crate) create: String,
    pub(crate) meta_owners: String,
    pub(crate) meta_insert: String,
    pub(crate) meta_read: String,
    fenced: bool,
    snapshots: String,
    owners: String,
    refuse: String,
}

impl Sql {
    pub(crate) fn new(schema: &str, table: &str, fenced: bool) -> Result<Sql, OpenError> {
        // Validated here, so every name below is a plain identifier inside double quotes.
        check_name("schema", schema, MAX_IDENTIFIER)?;
        check_name("table", table, MAX_IDENTIFIER - LONGEST_SUFFIX)?;
        let snapshots = format!("\"{schema}\".\"{table}\"");
        let owners = format!("\"{schema}\".\"{table}_owners\"");
        let meta = format!("\"{schema}\".\"{table}_meta\"");
        let refuse = format!("\"{schema}\".\"{table}_refuse\"");
        let create = format!(
            "DO $fsm$ BEGIN
                 -- Created only if missing: a node's role may own its schema without the
                 -- right to create schemas, which `CREATE SCHEMA IF NOT EXISTS` checks first.
                 IF to_regnamespace('{schema}') IS NULL THEN CREATE SCHEMA \"{schema}\"; END IF;
             END $fsm$;
             CREATE TABLE IF NOT EXISTS {snapshots} (
                 id text PRIMARY KEY,
                 seq bigint NOT NULL CHECK (seq > 0),
                 epoch bigint NOT NULL,
                 snapshot bytea NOT NULL,
                 state text,
                 state_seq bigint
             );
             DO $fsm$ BEGIN
                 -- Checked first: `ADD COLUMN IF NOT EXISTS` and `CREATE INDEX IF NOT EXISTS`
                 -- lock the table (waiting for every writer) even when there is nothing to do.
                 IF NOT EXISTS (SELECT 1 FROM pg_attribute
                                WHERE attrelid = '{snapshots}'::regclass AND attname = 'state_seq'
                                  AND NOT attisdropped) THEN
                     ALTER TABLE {snapshots} ADD COLUMN IF NOT EXISTS state text,
                                             ADD COLUMN IF NOT EXISTS state_seq bigint;
                 END IF;
                 IF to_regclass('\"{schema}\".\"{table}_state\"') IS NULL THEN
                     CREATE INDEX IF NOT EXISTS \"{table}_state\" ON {snapshots} (state, id COLLATE \"C\");
                 END IF;
                 IF to_regclass('\"{schema}\".\"{table}_ids\"') IS NULL THEN
                     CREATE INDEX IF NOT EXISTS \"{table}_ids\" ON {snapshots} (id COLLATE \"C\");
                 END IF;
             END $fsm$;
             CREATE TABLE IF NOT EXISTS {meta} (key text PRIMARY KEY, value text NOT NULL);
             CREATE TABLE IF NOT EXISTS {owners} (
                 partition integer PRIMARY KEY,
                 epoch bigint NOT NULL,
                 owner text,
                 lease_until timestamptz NOT NULL,
                 acquired_at timestamptz
             );
             CREATE OR REPLACE FUNCTION {refuse}(reason text) RETURNS bigint LANGUAGE plpgsql AS $fsm$
             BEGIN
                 RAISE EXCEPTION USING ERRCODE = '{REFUSED}', MESSAGE = reason;
             END
             $fsm$;"
        );
        Ok(Sql {
            table: format!("{schema}.{table}"),
            names: (schema.to_owned(), table.to_owned()),
            lock_key: format!("fsm-persist:{schema}.{table}"),
            create,
            meta_owners: format!(
                "INSERT INTO {owners} (partition, epoch, owner, lease_until)
                 SELECT p, 0, NULL, '-infinity' FROM generate_series(0, $1::int4 - 1) AS p
                 ON CONFLICT (partition) DO NOTHING"
            ),
            meta_insert: format!(
                "INSERT INTO {meta} (key, value) VALUES ('layout', $1::text), ('fencing', $2::text)
                 ON CONFLICT (key) DO NOTHING"
            ),
            meta_read: format!(
                "SELECT key, value FROM {meta}
                 UNION ALL SELECT 'partitions', count(*)::text FROM {owners}"
            ),
            fenced,
            snapshots,
            owners,
            refuse,
        })
    }

    /// The fence: the owner rows of the written partitions, locked so no takeover commits
    /// in between, and which of them do not hold the writer's epoch.
    fn fence_single(&self) -> String {
        format!(
            "fence AS MATERIALIZED (
                 SELECT epoch FROM {} WHERE partition = $4::int4 FOR SHARE
             ),",
            self.owners
        )
    }

    /// Parameters: `$1` id, `$2` seq, `$3` snapshot, and with fencing `$4` partition, `$5`
    /// epoch; then the state name (`$4` without fencing, `$6` with).
    fn insert(&self) -> String {
        let t = &self.snapshots;
        if self.fenced {
            format!(
                "WITH {fence}
                 written AS (
                     INSERT INTO {t} (id, seq, epoch, snapshot, state, state_seq)
                     SELECT $1::text, $2::int8, $5::int8, $3::bytea, $6::text, $2::int8
                     FROM fence WHERE fence.epoch = $5::int8
                     ON CONFLICT (id) DO NOTHING RETURNING 1
                 )
                 SELECT (SELECT epoch FROM fence), (SELECT count(*) FROM written)",
                fence = self.fence_single()
            )
        } else {
            format!(
                "WITH written AS (
                     INSERT INTO {t} (id, seq, epoch, snapshot, state, state_seq)
                     VALUES ($1::text, $2::int8, 0, $3::bytea, $4::text, $2::int8)
                     ON CONFLICT (id) DO NOTHING RETURNING 1
                 )
                 SELECT NULL::int8, (SELECT count(*) FROM written)"
            )
        }
    }

    /// Parameters: as [`Sql::insert`] without the state name, then the expected sequence
    /// (`$4` without fencing, `$6` with), then the state name (`$5`, `$7`).
    fn replace(&self) -> String {
        let t = &self.snapshots;
        if self.fenced {
            format!(
                "WITH {fence}
                 written AS (
                     UPDATE {t} SET seq = $2::int8, snapshot = $3::bytea, epoch = $5::int8,
                                    state = $7::text, state_seq = $2::int8
                     WHERE id = $1::text AND seq = $6::int8
                       AND EXISTS (SELECT 1 FROM fence WHERE fence.epoch = $5::int8)
                     RETURNING 1
                 )
                 SELECT (SELECT epoch FROM fence), (SELECT count(*) FROM written)",
                fence = self.fence_single()
            )
        } else {
            format!(
                "WITH written AS (
                     UPDATE {t} SET seq = $2::int8, snapshot = $3::bytea,
                                    state = $5::text, state_seq = $2::int8
                     WHERE id = $1::text AND seq = $4::int8
                     RETURNING 1
                 )
                 SELECT NULL::int8, (SELECT count(*) FROM written)"
            )
        }
    }

    /// One statement for a whole batch, over arrays, all or nothing on its own (autocommit):
    /// the rows expected absent are inserted, the others replaced where they hold the expected
    /// sequence, and if fewer rows were written than the batch holds the statement aborts
    /// (SQLSTATE [`REFUSED`]), which undoes the rest. With fencing, nothing is written if any
    /// partition's owner row holds another epoch. Returns the rows written and the stale
    /// partitions with their owners' epochs.
    fn batch(&self) -> String {
        let t = &self.snapshots;
        let (fence, only_if_owned, stale) = if self.fenced {
            (
                format!(
                    "fence AS MATERIALIZED (
                         SELECT o.partition, o.epoch FROM {} o
                         WHERE o.partition IN (SELECT part FROM batch)
                         ORDER BY o.partition FOR SHARE
                     ),
                     stale AS MATERIALIZED (
                         SELECT DISTINCT b.part, f.epoch AS current
                         FROM batch b LEFT JOIN fence f ON f.partition = b.part
                         WHERE f.epoch IS DISTINCT FROM b.epoch
                     ),",
                    self.owners
                ),
                "AND NOT EXISTS (SELECT 1 FROM stale)",
                "(SELECT array_agg(part ORDER BY part) FROM stale), (SELECT array_agg(current ORDER BY part) FROM stale)",
            )
        } else {
            (String::new(), "", "NULL::int4[], NULL::int8[]")
        };
        let or_fenced = if self.fenced {
            "OR EXISTS (SELECT 1 FROM stale)"
        } else {
            ""
        };
        let refuse = &self.refuse;
        format!(
            "WITH batch AS (
                 SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::bytea[], $5::int4[], $6::int8[], $7::text[])
                     AS b(id, expected, seq, snapshot, part, epoch, state)
             ),
             {fence}
             inserted AS (
                 INSERT INTO {t} (id, seq, epoch, snapshot, state, state_seq)
                 SELECT id, seq, epoch, snapshot, state, seq FROM batch WHERE expected IS NULL {only_if_owned}
                 ON CONFLICT (id) DO NOTHING RETURNING 1
             ),
             updated AS (
                 UPDATE {t} t SET seq = b.seq, snapshot = b.snapshot, epoch = b.epoch,
                                  state = b.state, state_seq = b.seq
                 FROM batch b WHERE t.id = b.id AND t.seq = b.expected {only_if_owned}
                 RETURNING 1
             ),
             written AS (
                 SELECT (SELECT count(*) FROM inserted) + (SELECT count(*) FROM updated) AS n
             )
             SELECT CASE WHEN n = cardinality($1::text[]) {or_fenced} THEN n
                         ELSE {refuse}('a compare-and-set of the batch failed') END,
                    {stale}
             FROM written"
        )
    }
}

/// The statements of one connection.
pub(crate) struct Statements {
    pub(crate) insert: Statement,
    pub(crate) replace: Statement,
    pub(crate) batch: Statement,
    pub(crate) get: Statement,
    /// As `get`, for the ids in `$1`, each row with its id.
    pub(crate) get_many: Statement,
    pub(crate) sequence: Statement,
    pub(crate) sequences: Statement,
    pub(crate) ids: Statement,
    /// `$1` after (exclusive), `$2` how many: ids in byte order.
    pub(crate) list_any: Statement,
    /// As `list_any`, `$3` the state.
    pub(crate) list_in: Statement,
    /// As `list_any`, of rows that record no state.
    pub(crate) list_unrecorded: Statement,
    /// Machines per recorded state (`NULL`: unrecorded).
    pub(crate) count_states: Statement,
    pub(crate) acquire: Statement,
    pub(crate) steal: Statement,
    pub(crate) renew: Statement,
    pub(crate) release: Statement,
    pub(crate) owners: Statement,
}

impl Statements {
    pub(crate) fn prepare(client: &mut Client, sql: &Sql) -> Result<Statements, postgres::Error> {
        let (t, o) = (&sql.snapshots, &sql.owners);
        let take = "SET epoch = epoch + 1, owner = $2::text,
                    lease_until = now() + $3::int8 * interval '1 millisecond', acquired_at = now()";
        Ok(Statements {
            insert: client.prepare(&sql.insert())?,
            replace: client.prepare(&sql.replace())?,
            batch: client.prepare(&sql.batch())?,
            get: client.prepare(&format!(
                "SELECT seq, length(snapshot)::int8, CASE WHEN length(snapshot) <= $2::int8 THEN snapshot END
                 FROM {t} WHERE id = $1::text"
            ))?,
            get_many: client.prepare(&format!(
                "SELECT id, seq, length(snapshot)::int8, CASE WHEN length(snapshot) <= $2::int8 THEN snapshot END
                 FROM {t} WHERE id = ANY($1::text[])"
            ))?,
            sequence: client.prepare(&format!("SELECT seq FROM {t} WHERE id = $1::text"))?,
            sequences: client.prepare(&format!(
                "SELECT id, seq FROM {t} WHERE id = ANY($1::text[])"
            ))?,
            ids: client.prepare(&format!("SELECT id FROM {t}"))?,
            list_any: client.prepare(&format!(
                "SELECT id FROM {t} WHERE id COLLATE \"C\" > $1::text
                 ORDER BY id COLLATE \"C\" LIMIT $2::int8"
            ))?,
            list_in: client.prepare(&format!(
                "SELECT id FROM {t}
                 WHERE state = $3::text AND state_seq = seq AND id COLLATE \"C\" > $1::text
                 ORDER BY id COLLATE \"C\" LIMIT $2::int8"
            ))?,
            list_unrecorded: client.prepare(&format!(
                "SELECT id FROM {t}
                 WHERE (state IS NULL OR state_seq IS DISTINCT FROM seq)
                   AND id COLLATE \"C\" > $1::text
                 ORDER BY id COLLATE \"C\" LIMIT $2::int8"
            ))?,
            count_states: client.prepare(&format!(
                "SELECT CASE WHEN state_seq = seq THEN state END AS s, count(*)::int8
                 FROM {t} GROUP BY s"
            ))?,
            acquire: client.prepare(&format!(
                "UPDATE {o} {take}
                 WHERE partition = ANY($1::int4[]) AND (owner IS NULL OR lease_until < now())
                 RETURNING partition, epoch"
            ))?,
            steal: client.prepare(&format!(
                "UPDATE {o} {take} WHERE partition = ANY($1::int4[]) RETURNING partition, epoch"
            ))?,
            renew: client.prepare(&format!(
                "UPDATE {o} o SET lease_until = now() + $3::int8 * interval '1 millisecond'
                 FROM unnest($1::int4[], $2::int8[]) AS h(partition, epoch)
                 WHERE o.partition = h.partition AND o.epoch = h.epoch AND o.owner IS NOT NULL
                 RETURNING o.partition"
            ))?,
            release: client.prepare(&format!(
                "UPDATE {o} o SET owner = NULL, lease_until = now()
                 FROM unnest($1::int4[], $2::int8[]) AS h(partition, epoch)
                 WHERE o.partition = h.partition AND o.epoch = h.epoch"
            ))?,
            owners: client.prepare(&format!(
                "SELECT partition, epoch, owner, owner IS NOT NULL AND lease_until >= now()
                 FROM {o} ORDER BY partition"
            ))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_inject_sql_are_refused() {
        for bad in [
            "",
            "Snapshots",
            "snap-shots",
            "t\"; DROP TABLE x; --",
            "1abc",
            "pg_snapshots",
            "é",
            &"x".repeat(57),
        ] {
            let err = Sql::new("public", bad, true).unwrap_err();
            assert!(
                matches!(err, OpenError::InvalidName { what: "table", .. }),
                "{bad:?}: {err}"
            );
        }
        assert!(matches!(
            Sql::new("my schema", "t", false),
            Err(OpenError::InvalidName { what: "schema", .. })
        ));
        for good in ["snapshots", "_t", "fsm_v2", &"x".repeat(56)] {
            Sql::new("fsm", good, true).unwrap();
        }
    }

    #[test]
    fn an_invalid_name_says_what_to_write_instead() {
        let err = Sql::new("public", "a;b", false).unwrap_err().to_string();
        assert!(err.contains("';' is not allowed"), "{err}");
        assert!(err.contains("a-z, 0-9 and `_`"), "{err}");
    }
}
