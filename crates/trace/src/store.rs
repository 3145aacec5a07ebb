//! The `.lumen` trace store: one SQLite database that users can query with SQL.
//!
//! The writer appends rows in one transaction per flush, in WAL mode, so a crash loses at most
//! the batch being written and the file stays readable; `meta.complete` says whether the writer
//! finished. Names and categories are interned in `strings`; the `span_names` and `mark_names`
//! views join them back for hand-written queries. The reader loads a whole trace back into a
//! [`TraceData`], and names the file and what is wrong when it cannot.

use crate::model::{AllocationRow, CounterRow, IterationRow, MarkRow, RequestRow, SpanRow, ThreadRow, TraceData};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SCHEMA_VERSION: &str = "1";

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE strings(id INTEGER PRIMARY KEY, value TEXT NOT NULL UNIQUE);
CREATE TABLE processes(pid INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE threads(tid INTEGER PRIMARY KEY, pid INTEGER NOT NULL, name TEXT NOT NULL);
CREATE TABLE spans(start INTEGER NOT NULL, end INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL REFERENCES strings(id),
                   category INTEGER NOT NULL REFERENCES strings(id), depth INTEGER NOT NULL, iteration INTEGER, args TEXT);
CREATE TABLE marks(ts INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL REFERENCES strings(id),
                   category INTEGER NOT NULL REFERENCES strings(id), iteration INTEGER, args TEXT);
CREATE TABLE gpu_ops(kind TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, device INTEGER, stream INTEGER, correlation INTEGER,
                     name INTEGER REFERENCES strings(id), grid TEXT, block TEXT, regs INTEGER, smem INTEGER, bytes INTEGER, copy_kind TEXT,
                     graph_id INTEGER, graph_node_id INTEGER);
CREATE TABLE api_calls(start INTEGER NOT NULL, end INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL REFERENCES strings(id),
                       correlation INTEGER, result INTEGER);
CREATE TABLE counters(ts INTEGER NOT NULL, name INTEGER NOT NULL REFERENCES strings(id), device INTEGER, value REAL NOT NULL);
CREATE TABLE iterations(iter INTEGER PRIMARY KEY, start INTEGER NOT NULL, end INTEGER NOT NULL, ctx_reqs INTEGER NOT NULL,
                        gen_reqs INTEGER NOT NULL, ctx_tokens INTEGER NOT NULL, gen_tokens INTEGER NOT NULL, kv_used_blocks INTEGER NOT NULL,
                        kv_total_blocks INTEGER NOT NULL, kv_util REAL NOT NULL, host_ms REAL NOT NULL, device_ms REAL);
CREATE TABLE requests(id INTEGER PRIMARY KEY, arrival INTEGER NOT NULL, first_token INTEGER, end INTEGER NOT NULL,
                      input_len INTEGER NOT NULL, output_len INTEGER NOT NULL);
CREATE TABLE allocations(iteration INTEGER NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL, frees INTEGER NOT NULL,
                         kv_blocks_allocated INTEGER NOT NULL, kv_blocks_freed INTEGER NOT NULL);
CREATE INDEX spans_by_start ON spans(start);
CREATE INDEX spans_by_iteration ON spans(iteration);
CREATE VIEW span_names AS SELECT s.start, s.end, s.end - s.start AS duration, s.tid, n.value AS name, c.value AS category, s.depth,
                                 s.iteration, s.args FROM spans s JOIN strings n ON n.id = s.name JOIN strings c ON c.id = s.category;
CREATE VIEW mark_names AS SELECT m.ts, m.tid, n.value AS name, c.value AS category, m.iteration, m.args
                          FROM marks m JOIN strings n ON n.id = m.name JOIN strings c ON c.id = m.category;
";

/// Rows to append in one batch.
#[derive(Default)]
pub struct Batch<'a> {
    pub threads: &'a [(u64, String)],
    pub spans: &'a [SpanRow],
    pub marks: &'a [MarkRow],
    pub counters: &'a [CounterRow],
    pub iterations: &'a [IterationRow],
    pub requests: &'a [RequestRow],
    pub allocations: &'a [AllocationRow],
}

/// Appends to a new trace file.
pub struct TraceWriter {
    path: PathBuf,
    db: Connection,
    strings: HashMap<String, i64>,
}

fn context(path: &Path, what: &str, e: rusqlite::Error) -> String {
    format!("trace {}: {what}: {e}", path.display())
}

impl TraceWriter {
    /// Creates `path` (replacing an existing file) with the schema and `meta` rows.
    pub fn create(path: &Path, meta: &[(String, String)]) -> Result<Self, String> {
        for p in [path.to_path_buf(), wal_path(path, "-wal"), wal_path(path, "-shm")] {
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| format!("trace {}: cannot replace the old file: {e}", p.display()))?;
            }
        }
        let db = Connection::open(path).map_err(|e| context(path, "cannot create", e))?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;").map_err(|e| context(path, "cannot set journal mode", e))?;
        db.execute_batch(SCHEMA).map_err(|e| context(path, "cannot create the schema", e))?;
        let mut w = TraceWriter { path: path.to_path_buf(), db, strings: HashMap::new() };
        let mut rows = vec![("schema_version".to_string(), SCHEMA_VERSION.to_string()), ("complete".to_string(), "false".to_string())];
        rows.extend(meta.iter().cloned());
        for (k, v) in rows {
            w.set_meta(&k, &v)?;
        }
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<(), String> {
        self.db
            .execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)", params![key, value])
            .map_err(|e| context(&self.path, "cannot write meta", e))?;
        Ok(())
    }

    /// Appends a batch in one transaction.
    pub fn append(&mut self, batch: &Batch) -> Result<(), String> {
        let path = self.path.clone();
        let err = |e| context(&path, "cannot append rows", e);
        let tx = self.db.transaction().map_err(err)?;
        {
            let strings = &mut self.strings;
            let mut intern = |value: &str| -> Result<i64, rusqlite::Error> {
                if let Some(&id) = strings.get(value) {
                    return Ok(id);
                }
                tx.execute("INSERT INTO strings(value) VALUES (?1)", params![value])?;
                let id = tx.last_insert_rowid();
                strings.insert(value.to_string(), id);
                Ok(id)
            };
            let pid = std::process::id();
            let mut thread = tx.prepare_cached("INSERT OR REPLACE INTO threads(tid, pid, name) VALUES (?1, ?2, ?3)").map_err(err)?;
            for (tid, name) in batch.threads {
                thread.execute(params![*tid as i64, pid, name]).map_err(err)?;
            }
            let mut span = tx.prepare_cached("INSERT INTO spans VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)").map_err(err)?;
            for s in batch.spans {
                let (name, cat) = (intern(&s.name).map_err(err)?, intern(&s.category).map_err(err)?);
                span.execute(params![
                    s.start_ns as i64,
                    s.end_ns as i64,
                    s.tid as i64,
                    name,
                    cat,
                    s.depth,
                    s.iteration.map(|i| i as i64),
                    s.args
                ])
                .map_err(err)?;
            }
            let mut mark = tx.prepare_cached("INSERT INTO marks VALUES (?1, ?2, ?3, ?4, ?5, ?6)").map_err(err)?;
            for m in batch.marks {
                let (name, cat) = (intern(&m.name).map_err(err)?, intern(&m.category).map_err(err)?);
                mark.execute(params![m.ts_ns as i64, m.tid as i64, name, cat, m.iteration.map(|i| i as i64), m.args]).map_err(err)?;
            }
            let mut counter = tx.prepare_cached("INSERT INTO counters VALUES (?1, ?2, ?3, ?4)").map_err(err)?;
            for c in batch.counters {
                let name = intern(&c.name).map_err(err)?;
                counter.execute(params![c.ts_ns as i64, name, c.device, c.value]).map_err(err)?;
            }
            let mut iteration = tx
                .prepare_cached("INSERT OR REPLACE INTO iterations VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)")
                .map_err(err)?;
            for i in batch.iterations {
                let util = if i.kv_total_blocks == 0 { 0.0 } else { i.kv_used_blocks as f64 / i.kv_total_blocks as f64 };
                iteration
                    .execute(params![
                        i.iter as i64,
                        i.start_ns as i64,
                        i.end_ns as i64,
                        i.ctx_reqs as i64,
                        i.gen_reqs as i64,
                        i.ctx_tokens as i64,
                        i.gen_tokens as i64,
                        i.kv_used_blocks as i64,
                        i.kv_total_blocks as i64,
                        util,
                        i.host_ms,
                        i.device_ms
                    ])
                    .map_err(err)?;
            }
            let mut request = tx.prepare_cached("INSERT OR REPLACE INTO requests VALUES (?1, ?2, ?3, ?4, ?5, ?6)").map_err(err)?;
            for r in batch.requests {
                request
                    .execute(params![
                        r.id as i64,
                        r.arrival_ns as i64,
                        r.first_token_ns.map(|t| t as i64),
                        r.end_ns as i64,
                        r.input_len as i64,
                        r.output_len as i64
                    ])
                    .map_err(err)?;
            }
            let mut allocation = tx.prepare_cached("INSERT INTO allocations VALUES (?1, ?2, ?3, ?4, ?5, ?6)").map_err(err)?;
            for a in batch.allocations {
                allocation
                    .execute(params![
                        a.iteration as i64,
                        a.count as i64,
                        a.bytes as i64,
                        a.frees as i64,
                        a.kv_blocks_allocated as i64,
                        a.kv_blocks_freed as i64
                    ])
                    .map_err(err)?;
            }
        }
        tx.commit().map_err(err)
    }

    /// Marks the trace complete and folds the WAL back into the single file.
    pub fn finish(mut self) -> Result<PathBuf, String> {
        self.set_meta("complete", "true")?;
        self.db
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;")
            .map_err(|e| context(&self.path, "cannot close", e))?;
        Ok(self.path)
    }
}

fn wal_path(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads a whole trace.
pub fn read_trace(path: &Path) -> Result<TraceData, String> {
    if !path.is_file() {
        return Err(format!("trace {}: no such file", path.display()));
    }
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .or_else(|_| Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY))
        .map_err(|e| context(path, "cannot open", e))?;
    let not_lumen =
        |e: rusqlite::Error| format!("trace {}: not a lumen trace (expected a SQLite file written by lumen): {e}", path.display());
    let version: Option<String> =
        db.query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0)).optional().map_err(not_lumen)?;
    match version.as_deref() {
        Some(SCHEMA_VERSION) => {}
        Some(v) => return Err(format!("trace {}: schema version {v}, this lumen reads version {SCHEMA_VERSION}", path.display())),
        None => return Err(format!("trace {}: not a lumen trace (meta has no schema_version)", path.display())),
    }
    let err = |e| context(path, "cannot read", e);
    let strings: HashMap<i64, String> = db
        .prepare("SELECT id, value FROM strings")
        .map_err(err)?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(err)?
        .collect::<Result<_, _>>()
        .map_err(err)?;
    let s = |id: i64| strings.get(&id).cloned().unwrap_or_default();
    let mut t = TraceData::default();
    t.meta = query(&db, "SELECT key, value FROM meta ORDER BY key", |r| Ok((r.get(0)?, r.get(1)?))).map_err(err)?;
    t.threads = query(&db, "SELECT pid, tid, name FROM threads ORDER BY tid", |r| {
        Ok(ThreadRow { pid: r.get(0)?, tid: r.get::<_, i64>(1)? as u64, name: r.get(2)? })
    })
    .map_err(err)?;
    t.spans = query(&db, "SELECT start, end, tid, name, category, depth, iteration, args FROM spans ORDER BY start, end DESC", |r| {
        Ok(SpanRow {
            start_ns: r.get::<_, i64>(0)? as u64,
            end_ns: r.get::<_, i64>(1)? as u64,
            tid: r.get::<_, i64>(2)? as u64,
            name: s(r.get(3)?),
            category: s(r.get(4)?),
            depth: r.get(5)?,
            iteration: r.get::<_, Option<i64>>(6)?.map(|i| i as u64),
            args: r.get(7)?,
        })
    })
    .map_err(err)?;
    t.marks = query(&db, "SELECT ts, tid, name, category, iteration, args FROM marks ORDER BY ts", |r| {
        Ok(MarkRow {
            ts_ns: r.get::<_, i64>(0)? as u64,
            tid: r.get::<_, i64>(1)? as u64,
            name: s(r.get(2)?),
            category: s(r.get(3)?),
            iteration: r.get::<_, Option<i64>>(4)?.map(|i| i as u64),
            args: r.get(5)?,
        })
    })
    .map_err(err)?;
    t.counters = query(&db, "SELECT ts, name, device, value FROM counters ORDER BY ts", |r| {
        Ok(CounterRow { ts_ns: r.get::<_, i64>(0)? as u64, name: s(r.get(1)?), device: r.get(2)?, value: r.get(3)? })
    })
    .map_err(err)?;
    t.iterations = query(
        &db,
        "SELECT iter, start, end, ctx_reqs, gen_reqs, ctx_tokens, gen_tokens, kv_used_blocks, kv_total_blocks, host_ms, device_ms
         FROM iterations ORDER BY iter",
        |r| {
            Ok(IterationRow {
                iter: r.get::<_, i64>(0)? as u64,
                start_ns: r.get::<_, i64>(1)? as u64,
                end_ns: r.get::<_, i64>(2)? as u64,
                ctx_reqs: r.get::<_, i64>(3)? as u64,
                gen_reqs: r.get::<_, i64>(4)? as u64,
                ctx_tokens: r.get::<_, i64>(5)? as u64,
                gen_tokens: r.get::<_, i64>(6)? as u64,
                kv_used_blocks: r.get::<_, i64>(7)? as u64,
                kv_total_blocks: r.get::<_, i64>(8)? as u64,
                host_ms: r.get(9)?,
                device_ms: r.get(10)?,
            })
        },
    )
    .map_err(err)?;
    t.requests = query(&db, "SELECT id, arrival, first_token, end, input_len, output_len FROM requests ORDER BY id", |r| {
        Ok(RequestRow {
            id: r.get::<_, i64>(0)? as u64,
            arrival_ns: r.get::<_, i64>(1)? as u64,
            first_token_ns: r.get::<_, Option<i64>>(2)?.map(|v| v as u64),
            end_ns: r.get::<_, i64>(3)? as u64,
            input_len: r.get::<_, i64>(4)? as u64,
            output_len: r.get::<_, i64>(5)? as u64,
        })
    })
    .map_err(err)?;
    t.allocations = query(
        &db,
        "SELECT iteration, count, bytes, frees, kv_blocks_allocated, kv_blocks_freed FROM allocations ORDER BY iteration",
        |r| {
            Ok(AllocationRow {
                iteration: r.get::<_, i64>(0)? as u64,
                count: r.get::<_, i64>(1)? as u64,
                bytes: r.get::<_, i64>(2)? as u64,
                frees: r.get::<_, i64>(3)? as u64,
                kv_blocks_allocated: r.get::<_, i64>(4)? as u64,
                kv_blocks_freed: r.get::<_, i64>(5)? as u64,
            })
        },
    )
    .map_err(err)?;
    Ok(t)
}

fn query<T>(db: &Connection, sql: &str, f: impl FnMut(&rusqlite::Row) -> rusqlite::Result<T>) -> rusqlite::Result<Vec<T>> {
    db.prepare(sql)?.query_map([], f)?.collect()
}

/// Row counts per table, for `lumen trace info`.
pub fn table_counts(path: &Path) -> Result<Vec<(String, i64)>, String> {
    read_trace(path)?;
    let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| context(path, "cannot open", e))?;
    let tables = ["threads", "spans", "marks", "counters", "iterations", "requests", "gpu_ops", "api_calls", "allocations", "strings"];
    tables
        .iter()
        .map(|t| {
            db.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |r| r.get(0))
                .map(|n| (t.to_string(), n))
                .map_err(|e| context(path, "cannot count", e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lumen-store-{}-{name}.lumen", std::process::id()))
    }

    fn span(start: u64, end: u64, name: &str, depth: u32, iteration: Option<u64>) -> SpanRow {
        SpanRow { start_ns: start, end_ns: end, tid: 7, name: name.into(), category: "phase".into(), depth, iteration, args: None }
    }

    #[test]
    fn rows_round_trip_and_sql_sees_them() {
        let path = temp("roundtrip");
        let mut w = TraceWriter::create(&path, &[("command".into(), "lumen bench".into())]).unwrap();
        let spans = [span(10, 50, "iter 0: 1 ctx reqs, 0 gen reqs", 0, Some(0)), span(12, 20, "forward", 1, Some(0))];
        let iterations = [IterationRow {
            iter: 0,
            start_ns: 10,
            end_ns: 50,
            ctx_reqs: 1,
            gen_reqs: 0,
            ctx_tokens: 9,
            gen_tokens: 0,
            kv_used_blocks: 3,
            kv_total_blocks: 12,
            host_ms: 0.04,
            device_ms: None,
        }];
        let threads = [(7u64, "lumen-engine".to_string())];
        w.append(&Batch { threads: &threads, spans: &spans, iterations: &iterations, ..Default::default() }).unwrap();
        let counters = [CounterRow { ts_ns: 30, name: "kv_util".into(), device: None, value: 0.25 }];
        w.append(&Batch { counters: &counters, ..Default::default() }).unwrap();
        w.finish().unwrap();
        let t = read_trace(&path).unwrap();
        assert_eq!(t.meta("complete"), Some("true"));
        assert_eq!(t.meta("command"), Some("lumen bench"));
        assert_eq!(t.spans, spans.to_vec());
        assert_eq!(t.iterations, iterations.to_vec());
        assert_eq!(t.counters, counters.to_vec());
        assert_eq!(t.threads[0].name, "lumen-engine");
        let db = Connection::open(&path).unwrap();
        let util: f64 = db.query_row("SELECT kv_util FROM iterations WHERE iter = 0", [], |r| r.get(0)).unwrap();
        assert_eq!(util, 0.25);
        let name: String = db.query_row("SELECT name FROM span_names WHERE depth = 1", [], |r| r.get(0)).unwrap();
        assert_eq!(name, "forward");
        assert!(!wal_path(&path, "-wal").exists(), "a finished trace is one file");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let path = temp("garbage");
        std::fs::write(&path, b"this is not sqlite at all, just text that goes on for a while").unwrap();
        let e = read_trace(&path).unwrap_err();
        assert!(e.contains("not a lumen trace") && e.contains("garbage"), "{e}");
        let e = read_trace(Path::new("/nonexistent/x.lumen")).unwrap_err();
        assert!(e.contains("no such file"), "{e}");
        let other = temp("other");
        Connection::open(&other).unwrap().execute_batch("CREATE TABLE t(x); CREATE TABLE meta(key, value);").unwrap();
        let e = read_trace(&other).unwrap_err();
        assert!(e.contains("no schema_version"), "{e}");
        std::fs::remove_file(path).unwrap();
        std::fs::remove_file(other).unwrap();
    }
}
