//! The `.lumen` trace store: one SQLite database that users can query with SQL.
//!
//! The writer appends rows in one transaction per flush, in WAL mode, so a crash loses at most
//! the batch being written and the file stays readable; `meta.complete` says whether the writer
//! finished. Names and categories are interned in `strings`; the `span_names`, `mark_names`,
//! `gpu_op_names` and `api_call_names` views join them back for hand-written queries. The reader
//! loads a whole trace back into a [`TraceData`] (or streams one table in chunks, for merging), and
//! names the file and what is wrong when it cannot.
//!
//! Schema version 2 added `pid` to `gpu_ops` and `api_calls` and `pinned` to `gpu_ops`. Version 3
//! added `queued_reqs`, `weight_bytes`, `kv_bytes_read` and `flops` to `iterations` (nullable).
//! Older files still open: nothing wrote the `gpu_ops` and `api_calls` of version 1 files, so those
//! read as empty, and the iterations of version 1 and 2 files read with the version-3 fields
//! `None`. Version 4 added `expert_load`: per iteration and mixture-of-experts layer, the tokens
//! each expert received, as a JSON array (`json_each` reads it in SQL); older files have none.
//! Version 5 added `fp8_flops` to `iterations` (nullable; `None` when read from older files), and
//! version 6 `attention_flops` in the same way.

use crate::model::{
    AllocationRow, ApiCallRow, CounterRow, ExpertLoadRow, GpuOpKind, GpuOpRow, IterationRow, MarkRow, ProcessRow, RequestRow, SpanRow,
    ThreadRow, TraceData,
};
use anyhow::{anyhow, bail, Context, Result};
use rusqlite::types::Type;
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const SCHEMA_VERSION: &str = "6";

/// The schema versions [`read_trace`] opens: versions 1, 2, ... up to [`SCHEMA_VERSION`], in order.
const READABLE_VERSIONS: [&str; 6] = ["1", "2", "3", "4", "5", SCHEMA_VERSION];

const SCHEMA: &str = "
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE strings(id INTEGER PRIMARY KEY, value TEXT NOT NULL UNIQUE);
CREATE TABLE processes(pid INTEGER PRIMARY KEY, name TEXT NOT NULL);
CREATE TABLE threads(tid INTEGER PRIMARY KEY, pid INTEGER NOT NULL, name TEXT NOT NULL);
CREATE TABLE spans(start INTEGER NOT NULL, end INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL REFERENCES strings(id),
                   category INTEGER NOT NULL REFERENCES strings(id), depth INTEGER NOT NULL, iteration INTEGER, args TEXT);
CREATE TABLE marks(ts INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL REFERENCES strings(id),
                   category INTEGER NOT NULL REFERENCES strings(id), iteration INTEGER, args TEXT);
CREATE TABLE gpu_ops(kind TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, pid INTEGER NOT NULL, device INTEGER NOT NULL,
                     stream INTEGER, correlation INTEGER, name INTEGER NOT NULL REFERENCES strings(id), grid TEXT, block TEXT, regs INTEGER,
                     smem INTEGER, bytes INTEGER, copy_kind TEXT, pinned INTEGER, graph_id INTEGER, graph_node_id INTEGER);
CREATE TABLE api_calls(start INTEGER NOT NULL, end INTEGER NOT NULL, pid INTEGER NOT NULL, tid INTEGER NOT NULL,
                       name INTEGER NOT NULL REFERENCES strings(id), correlation INTEGER, result INTEGER);
CREATE TABLE counters(ts INTEGER NOT NULL, name INTEGER NOT NULL REFERENCES strings(id), device INTEGER, value REAL NOT NULL);
CREATE TABLE iterations(iter INTEGER PRIMARY KEY, start INTEGER NOT NULL, end INTEGER NOT NULL, ctx_reqs INTEGER NOT NULL,
                        gen_reqs INTEGER NOT NULL, ctx_tokens INTEGER NOT NULL, gen_tokens INTEGER NOT NULL, kv_used_blocks INTEGER NOT NULL,
                        kv_total_blocks INTEGER NOT NULL, kv_util REAL NOT NULL, host_ms REAL NOT NULL, device_ms REAL,
                        queued_reqs INTEGER, weight_bytes INTEGER, kv_bytes_read INTEGER, flops REAL, fp8_flops REAL,
                        attention_flops REAL);
CREATE TABLE requests(id INTEGER PRIMARY KEY, arrival INTEGER NOT NULL, first_token INTEGER, end INTEGER NOT NULL,
                      input_len INTEGER NOT NULL, output_len INTEGER NOT NULL);
CREATE TABLE allocations(iteration INTEGER NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL, frees INTEGER NOT NULL,
                         kv_blocks_allocated INTEGER NOT NULL, kv_blocks_freed INTEGER NOT NULL);
CREATE TABLE expert_load(iteration INTEGER NOT NULL, layer INTEGER NOT NULL, tokens TEXT NOT NULL, PRIMARY KEY(iteration, layer));
CREATE INDEX spans_by_start ON spans(start);
CREATE INDEX spans_by_iteration ON spans(iteration);
CREATE INDEX gpu_ops_by_start ON gpu_ops(start);
CREATE INDEX gpu_ops_by_correlation ON gpu_ops(correlation, pid);
CREATE INDEX api_calls_by_start ON api_calls(start);
CREATE INDEX api_calls_by_correlation ON api_calls(correlation, pid);
CREATE VIEW span_names AS SELECT s.start, s.end, s.end - s.start AS duration, s.tid, n.value AS name, c.value AS category, s.depth,
                                 s.iteration, s.args FROM spans s JOIN strings n ON n.id = s.name JOIN strings c ON c.id = s.category;
CREATE VIEW mark_names AS SELECT m.ts, m.tid, n.value AS name, c.value AS category, m.iteration, m.args
                          FROM marks m JOIN strings n ON n.id = m.name JOIN strings c ON c.id = m.category;
CREATE VIEW gpu_op_names AS SELECT g.kind, g.start, g.end, g.end - g.start AS duration, g.pid, g.device, g.stream, g.correlation,
                                   n.value AS name, g.grid, g.block, g.regs, g.smem, g.bytes, g.copy_kind, g.pinned, g.graph_id,
                                   g.graph_node_id FROM gpu_ops g JOIN strings n ON n.id = g.name;
CREATE VIEW api_call_names AS SELECT a.start, a.end, a.end - a.start AS duration, a.pid, a.tid, n.value AS name, a.correlation, a.result
                              FROM api_calls a JOIN strings n ON n.id = a.name;
";

/// Rows the engine's recorder gathered, to append in one batch. Threads belong to the writing
/// process.
#[derive(Default)]
pub struct Batch<'a> {
    pub threads: &'a [(u64, String)],
    pub spans: &'a [SpanRow],
    pub marks: &'a [MarkRow],
    pub counters: &'a [CounterRow],
    pub iterations: &'a [IterationRow],
    pub requests: &'a [RequestRow],
    pub allocations: &'a [AllocationRow],
    pub expert_loads: &'a [ExpertLoadRow],
}

/// GPU activity, and the processes and threads it came from, to append in one batch. Each row
/// names its own process.
#[derive(Default)]
pub struct GpuBatch<'a> {
    pub processes: &'a [ProcessRow],
    pub threads: &'a [ThreadRow],
    pub gpu_ops: &'a [GpuOpRow],
    pub api_calls: &'a [ApiCallRow],
}

/// Appends to a new trace file.
pub struct TraceWriter {
    path: PathBuf,
    db: Connection,
    strings: HashMap<String, i64>,
}

/// `trace <path>: <what>`, the context of an error about the trace at `path`.
fn about(path: &Path, what: &str) -> String {
    format!("trace {}: {what}", path.display())
}

impl TraceWriter {
    /// Creates `path` (replacing an existing file) with the schema and `meta` rows, plus
    /// `schema_version` and `complete` = false, which `meta` cannot override.
    pub fn create(path: &Path, meta: &[(String, String)]) -> Result<Self> {
        for p in [path.to_path_buf(), wal_path(path, "-wal"), wal_path(path, "-shm")] {
            if p.exists() {
                std::fs::remove_file(&p).with_context(|| about(&p, "cannot replace the old file"))?;
            }
        }
        let db = Connection::open(path).with_context(|| about(path, "cannot create"))?;
        db.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;").with_context(|| about(path, "cannot set journal mode"))?;
        db.execute_batch(SCHEMA).with_context(|| about(path, "cannot create the schema"))?;
        let mut w = TraceWriter { path: path.to_path_buf(), db, strings: HashMap::new() };
        for (k, v) in meta {
            w.set_meta(k, v)?;
        }
        w.set_meta("schema_version", SCHEMA_VERSION)?;
        w.set_meta("complete", "false")?;
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn set_meta(&mut self, key: &str, value: &str) -> Result<()> {
        self.db
            .execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?1, ?2)", params![key, value])
            .with_context(|| about(&self.path, "cannot write meta"))?;
        Ok(())
    }

    /// Appends a batch of recorder rows in one transaction.
    pub fn append(&mut self, batch: &Batch) -> Result<()> {
        self.write(batch, &GpuBatch::default())
    }

    /// Appends a batch of GPU activity in one transaction.
    pub fn append_gpu(&mut self, batch: &GpuBatch) -> Result<()> {
        self.write(&Batch::default(), batch)
    }

    /// Appends both kinds of rows in one transaction.
    pub(crate) fn write(&mut self, batch: &Batch, gpu: &GpuBatch) -> Result<()> {
        let path = self.path.clone();
        let err = || about(&path, "cannot append rows");
        let tx = self.db.transaction().with_context(err)?;
        {
            let strings = &mut self.strings;
            let mut intern = |value: &str| -> Result<i64> {
                if let Some(&id) = strings.get(value) {
                    return Ok(id);
                }
                tx.execute("INSERT INTO strings(value) VALUES (?1)", params![value]).with_context(err)?;
                let id = tx.last_insert_rowid();
                strings.insert(value.to_string(), id);
                Ok(id)
            };
            let mut process = tx.prepare_cached("INSERT OR REPLACE INTO processes(pid, name) VALUES (?1, ?2)").with_context(err)?;
            for p in gpu.processes {
                process.execute(params![p.pid, p.name]).with_context(err)?;
            }
            let mut thread = tx.prepare_cached("INSERT OR REPLACE INTO threads(tid, pid, name) VALUES (?1, ?2, ?3)").with_context(err)?;
            let pid = std::process::id();
            for (tid, name) in batch.threads {
                thread.execute(params![*tid as i64, pid, name]).with_context(err)?;
            }
            for t in gpu.threads {
                thread.execute(params![t.tid as i64, t.pid, t.name]).with_context(err)?;
            }
            let mut span = tx.prepare_cached("INSERT INTO spans VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)").with_context(err)?;
            for s in batch.spans {
                let (name, cat) = (intern(&s.name)?, intern(&s.category)?);
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
                .with_context(err)?;
            }
            let mut mark = tx.prepare_cached("INSERT INTO marks VALUES (?1, ?2, ?3, ?4, ?5, ?6)").with_context(err)?;
            for m in batch.marks {
                let (name, cat) = (intern(&m.name)?, intern(&m.category)?);
                mark.execute(params![m.ts_ns as i64, m.tid as i64, name, cat, m.iteration.map(|i| i as i64), m.args]).with_context(err)?;
            }
            let mut counter = tx.prepare_cached("INSERT INTO counters VALUES (?1, ?2, ?3, ?4)").with_context(err)?;
            for c in batch.counters {
                let name = intern(&c.name)?;
                counter.execute(params![c.ts_ns as i64, name, c.device, c.value]).with_context(err)?;
            }
            let mut gpu_op = tx
                .prepare_cached("INSERT INTO gpu_ops VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)")
                .with_context(err)?;
            for g in gpu.gpu_ops {
                let name = intern(&g.name)?;
                gpu_op
                    .execute(params![
                        g.kind.as_str(),
                        g.start_ns as i64,
                        g.end_ns as i64,
                        g.pid,
                        g.device,
                        g.stream.map(|v| v as i64),
                        g.correlation.map(|v| v as i64),
                        name,
                        g.grid.map(dim3_text),
                        g.block.map(dim3_text),
                        g.registers,
                        g.shared_mem_bytes.map(|v| v as i64),
                        g.bytes.map(|v| v as i64),
                        g.copy_kind,
                        g.pinned,
                        g.graph_id.map(|v| v as i64),
                        g.graph_node_id.map(|v| v as i64)
                    ])
                    .with_context(err)?;
            }
            let mut api_call = tx.prepare_cached("INSERT INTO api_calls VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)").with_context(err)?;
            for a in gpu.api_calls {
                let name = intern(&a.name)?;
                api_call
                    .execute(params![
                        a.start_ns as i64,
                        a.end_ns as i64,
                        a.pid,
                        a.tid as i64,
                        name,
                        a.correlation.map(|v| v as i64),
                        a.result
                    ])
                    .with_context(err)?;
            }
            let mut iteration = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO iterations VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)",
                )
                .with_context(err)?;
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
                        i.device_ms,
                        i.queued_reqs.map(|v| v as i64),
                        i.weight_bytes.map(|v| v as i64),
                        i.kv_bytes_read.map(|v| v as i64),
                        i.flops,
                        i.fp8_flops,
                        i.attention_flops
                    ])
                    .with_context(err)?;
            }
            let mut request = tx.prepare_cached("INSERT OR REPLACE INTO requests VALUES (?1, ?2, ?3, ?4, ?5, ?6)").with_context(err)?;
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
                    .with_context(err)?;
            }
            let mut allocation = tx.prepare_cached("INSERT INTO allocations VALUES (?1, ?2, ?3, ?4, ?5, ?6)").with_context(err)?;
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
                    .with_context(err)?;
            }
            let mut expert_load = tx.prepare_cached("INSERT OR REPLACE INTO expert_load VALUES (?1, ?2, ?3)").with_context(err)?;
            for e in batch.expert_loads {
                let tokens = serde_json::to_string(&e.tokens).expect("a list of integers serialises");
                expert_load.execute(params![e.iteration as i64, e.layer, tokens]).with_context(err)?;
            }
        }
        tx.commit().with_context(err)
    }

    /// Marks the trace complete and folds the WAL back into the single file.
    pub fn finish(self) -> Result<PathBuf> {
        self.close(true)
    }

    /// Sets `meta.complete` and folds the WAL back into the single file.
    pub(crate) fn close(mut self, complete: bool) -> Result<PathBuf> {
        self.set_meta("complete", if complete { "true" } else { "false" })?;
        self.db
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode=DELETE;")
            .with_context(|| about(&self.path, "cannot close"))?;
        Ok(self.path)
    }
}

pub(crate) fn wal_path(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A grid or block size as the store keeps it: `x,y,z`.
fn dim3_text(d: [u32; 3]) -> String {
    format!("{},{},{}", d[0], d[1], d[2])
}

fn parse_dim3(text: &str) -> Option<[u32; 3]> {
    let mut parts = text.split(',').map(|p| p.trim().parse::<u32>().ok());
    let dims = [parts.next()??, parts.next()??, parts.next()??];
    parts.next().is_none().then_some(dims)
}

/// A value in a column that the row type cannot hold; [`TraceReader`] reports `message` with the
/// file and table.
fn bad_value(column: usize, message: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, Type::Text, message.into())
}

/// The interned strings of one trace.
pub(crate) struct Names(HashMap<i64, String>);

impl Names {
    /// The string that column `column` of `row` refers to.
    fn get(&self, row: &Row, column: usize) -> rusqlite::Result<String> {
        let id: i64 = row.get(column)?;
        self.0.get(&id).cloned().ok_or_else(|| bad_value(column, format!("string id {id} is not in the strings table")))
    }
}

fn u64_at(row: &Row, column: usize) -> rusqlite::Result<u64> {
    Ok(row.get::<_, i64>(column)? as u64)
}

fn opt_u64_at(row: &Row, column: usize) -> rusqlite::Result<Option<u64>> {
    Ok(row.get::<_, Option<i64>>(column)?.map(|v| v as u64))
}

fn dim3_at(row: &Row, column: usize, what: &str) -> rusqlite::Result<Option<[u32; 3]>> {
    match row.get::<_, Option<String>>(column)? {
        None => Ok(None),
        Some(text) => parse_dim3(&text).map(Some).ok_or_else(|| bad_value(column, format!("{what} {text:?} is not x,y,z"))),
    }
}

/// A row type kept in one table: how to read it back.
pub(crate) trait Stored: Sized {
    const TABLE: &'static str;
    /// The first schema version with this table's columns; older files hold none of its rows.
    const SINCE: u32;
    /// The query that reads every row, in the order [`read_trace`] returns them.
    const SELECT: &'static str;
    /// The query for a file of schema `version` (at least [`Self::SINCE`]): [`Self::SELECT`]
    /// unless the table gained columns since, which older files then read as NULL.
    fn select(_version: u32) -> &'static str {
        Self::SELECT
    }
    fn read(row: &Row, names: &Names) -> rusqlite::Result<Self>;
}

impl Stored for ProcessRow {
    const TABLE: &'static str = "processes";
    const SINCE: u32 = 1;
    const SELECT: &'static str = "SELECT pid, name FROM processes ORDER BY pid";
    fn read(r: &Row, _: &Names) -> rusqlite::Result<Self> {
        Ok(ProcessRow { pid: r.get(0)?, name: r.get(1)? })
    }
}

impl Stored for ThreadRow {
    const TABLE: &'static str = "threads";
    const SINCE: u32 = 1;
    const SELECT: &'static str = "SELECT pid, tid, name FROM threads ORDER BY tid";
    fn read(r: &Row, _: &Names) -> rusqlite::Result<Self> {
        Ok(ThreadRow { pid: r.get(0)?, tid: u64_at(r, 1)?, name: r.get(2)? })
    }
}

impl Stored for SpanRow {
    const TABLE: &'static str = "spans";
    const SINCE: u32 = 1;
    const SELECT: &'static str = "SELECT start, end, tid, name, category, depth, iteration, args FROM spans ORDER BY start, end DESC";
    fn read(r: &Row, names: &Names) -> rusqlite::Result<Self> {
        Ok(SpanRow {
            start_ns: u64_at(r, 0)?,
            end_ns: u64_at(r, 1)?,
            tid: u64_at(r, 2)?,
            name: names.get(r, 3)?,
            category: names.get(r, 4)?,
            depth: r.get(5)?,
            iteration: opt_u64_at(r, 6)?,
            args: r.get(7)?,
        })
    }
}

impl Stored for MarkRow {
    const TABLE: &'static str = "marks";
    const SINCE: u32 = 1;
    const SELECT: &'static str = "SELECT ts, tid, name, category, iteration, args FROM marks ORDER BY ts";
    fn read(r: &Row, names: &Names) -> rusqlite::Result<Self> {
        Ok(MarkRow {
            ts_ns: u64_at(r, 0)?,
            tid: u64_at(r, 1)?,
            name: names.get(r, 2)?,
            category: names.get(r, 3)?,
            iteration: opt_u64_at(r, 4)?,
            args: r.get(5)?,
        })
    }
}

impl Stored for CounterRow {
    const TABLE: &'static str = "counters";
    const SINCE: u32 = 1;
    const SELECT: &'static str = "SELECT ts, name, device, value FROM counters ORDER BY ts";
    fn read(r: &Row, names: &Names) -> rusqlite::Result<Self> {
        Ok(CounterRow { ts_ns: u64_at(r, 0)?, name: names.get(r, 1)?, device: r.get(2)?, value: r.get(3)? })
    }
}

impl Stored for GpuOpRow {
    const TABLE: &'static str = "gpu_ops";
    const SINCE: u32 = 2;
    const SELECT: &'static str =
        "SELECT kind, start, end, pid, device, stream, correlation, name, grid, block, regs, smem, bytes, copy_kind,
                                         pinned, graph_id, graph_node_id FROM gpu_ops ORDER BY start, rowid";
    fn read(r: &Row, names: &Names) -> rusqlite::Result<Self> {
        let kind: String = r.get(0)?;
        Ok(GpuOpRow {
            kind: kind.parse::<GpuOpKind>().map_err(|e| bad_value(0, e))?,
            start_ns: u64_at(r, 1)?,
            end_ns: u64_at(r, 2)?,
            pid: r.get(3)?,
            device: r.get(4)?,
            stream: opt_u64_at(r, 5)?,
            correlation: opt_u64_at(r, 6)?,
            name: names.get(r, 7)?,
            grid: dim3_at(r, 8, "grid")?,
            block: dim3_at(r, 9, "block")?,
            registers: r.get(10)?,
            shared_mem_bytes: opt_u64_at(r, 11)?,
            bytes: opt_u64_at(r, 12)?,
            copy_kind: r.get(13)?,
            pinned: r.get(14)?,
            graph_id: opt_u64_at(r, 15)?,
            graph_node_id: opt_u64_at(r, 16)?,
        })
    }
}

impl Stored for ApiCallRow {
    const TABLE: &'static str = "api_calls";
    const SINCE: u32 = 2;
    const SELECT: &'static str = "SELECT start, end, pid, tid, name, correlation, result FROM api_calls ORDER BY start, rowid";
    fn read(r: &Row, names: &Names) -> rusqlite::Result<Self> {
        Ok(ApiCallRow {
            start_ns: u64_at(r, 0)?,
            end_ns: u64_at(r, 1)?,
            pid: r.get(2)?,
            tid: u64_at(r, 3)?,
            name: names.get(r, 4)?,
            correlation: opt_u64_at(r, 5)?,
            result: r.get(6)?,
        })
    }
}

impl Stored for IterationRow {
    const TABLE: &'static str = "iterations";
    const SINCE: u32 = 1;
    const SELECT: &'static str = "SELECT iter, start, end, ctx_reqs, gen_reqs, ctx_tokens, gen_tokens, kv_used_blocks, kv_total_blocks,
                                         host_ms, device_ms, queued_reqs, weight_bytes, kv_bytes_read, flops, fp8_flops, attention_flops
                                         FROM iterations ORDER BY iter";
    fn select(version: u32) -> &'static str {
        match version {
            6.. => Self::SELECT,
            5 => {
                "SELECT iter, start, end, ctx_reqs, gen_reqs, ctx_tokens, gen_tokens, kv_used_blocks, kv_total_blocks, host_ms, device_ms,
                        queued_reqs, weight_bytes, kv_bytes_read, flops, fp8_flops, NULL FROM iterations ORDER BY iter"
            }
            3 | 4 => {
                "SELECT iter, start, end, ctx_reqs, gen_reqs, ctx_tokens, gen_tokens, kv_used_blocks, kv_total_blocks, host_ms, device_ms,
                        queued_reqs, weight_bytes, kv_bytes_read, flops, NULL, NULL FROM iterations ORDER BY iter"
            }
            _ => {
                "SELECT iter, start, end, ctx_reqs, gen_reqs, ctx_tokens, gen_tokens, kv_used_blocks, kv_total_blocks, host_ms, device_ms,
                        NULL, NULL, NULL, NULL, NULL, NULL FROM iterations ORDER BY iter"
            }
        }
    }
    fn read(r: &Row, _: &Names) -> rusqlite::Result<Self> {
        Ok(IterationRow {
            iter: u64_at(r, 0)?,
            start_ns: u64_at(r, 1)?,
            end_ns: u64_at(r, 2)?,
            ctx_reqs: u64_at(r, 3)?,
            gen_reqs: u64_at(r, 4)?,
            ctx_tokens: u64_at(r, 5)?,
            gen_tokens: u64_at(r, 6)?,
            kv_used_blocks: u64_at(r, 7)?,
            kv_total_blocks: u64_at(r, 8)?,
            host_ms: r.get(9)?,
            device_ms: r.get(10)?,
            queued_reqs: opt_u64_at(r, 11)?,
            weight_bytes: opt_u64_at(r, 12)?,
            kv_bytes_read: opt_u64_at(r, 13)?,
            flops: r.get(14)?,
            fp8_flops: r.get(15)?,
            attention_flops: r.get(16)?,
        })
    }
}

impl Stored for RequestRow {
    const TABLE: &'static str = "requests";
    const SINCE: u32 = 1;
    const SELECT: &'static str = "SELECT id, arrival, first_token, end, input_len, output_len FROM requests ORDER BY id";
    fn read(r: &Row, _: &Names) -> rusqlite::Result<Self> {
        Ok(RequestRow {
            id: u64_at(r, 0)?,
            arrival_ns: u64_at(r, 1)?,
            first_token_ns: opt_u64_at(r, 2)?,
            end_ns: u64_at(r, 3)?,
            input_len: u64_at(r, 4)?,
            output_len: u64_at(r, 5)?,
        })
    }
}

impl Stored for AllocationRow {
    const TABLE: &'static str = "allocations";
    const SINCE: u32 = 1;
    const SELECT: &'static str =
        "SELECT iteration, count, bytes, frees, kv_blocks_allocated, kv_blocks_freed FROM allocations ORDER BY iteration, rowid";
    fn read(r: &Row, _: &Names) -> rusqlite::Result<Self> {
        Ok(AllocationRow {
            iteration: u64_at(r, 0)?,
            count: u64_at(r, 1)?,
            bytes: u64_at(r, 2)?,
            frees: u64_at(r, 3)?,
            kv_blocks_allocated: u64_at(r, 4)?,
            kv_blocks_freed: u64_at(r, 5)?,
        })
    }
}

impl Stored for ExpertLoadRow {
    const TABLE: &'static str = "expert_load";
    const SINCE: u32 = 4;
    const SELECT: &'static str = "SELECT iteration, layer, tokens FROM expert_load ORDER BY iteration, layer";
    fn read(r: &Row, _: &Names) -> rusqlite::Result<Self> {
        let text: String = r.get(2)?;
        let tokens = serde_json::from_str(&text).map_err(|e| bad_value(2, format!("tokens {text:?} is not a JSON list of counts: {e}")))?;
        Ok(ExpertLoadRow { iteration: u64_at(r, 0)?, layer: r.get(1)?, tokens })
    }
}

/// An open trace, its schema version checked and its strings loaded, whose tables can be read
/// whole or streamed.
pub(crate) struct TraceReader {
    path: PathBuf,
    db: Connection,
    version: u32,
    names: Names,
}

impl TraceReader {
    pub(crate) fn open(path: &Path) -> Result<Self> {
        if path.is_dir() {
            bail!("trace {} is a directory; expected a .lumen file written by lumen", path.display());
        }
        if !path.is_file() {
            bail!("trace {}: no such file", path.display());
        }
        // Read-write when possible, so that the WAL of a trace whose writer died is recovered.
        let db = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .or_else(|_| Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY))
            .with_context(|| about(path, "cannot open"))?;
        let version: Option<String> = db
            .query_row("SELECT value FROM meta WHERE key = 'schema_version'", [], |r| r.get(0))
            .optional()
            .with_context(|| about(path, "not a lumen trace (expected a SQLite file written by lumen)"))?;
        let version = version.with_context(|| about(path, "not a lumen trace (meta has no schema_version)"))?;
        let index = READABLE_VERSIONS.iter().position(|v| *v == version).with_context(|| {
            format!(
                "trace {}: schema version {version}, but this lumen reads versions {} to {SCHEMA_VERSION}",
                path.display(),
                READABLE_VERSIONS[0]
            )
        })?;
        let strings = query(&db, "SELECT id, value FROM strings", |r| Ok((r.get(0)?, r.get(1)?)))
            .with_context(|| about(path, "cannot read table strings"))?;
        Ok(TraceReader { path: path.to_path_buf(), db, version: index as u32 + 1, names: Names(strings.into_iter().collect()) })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The processes whose GPU operations the trace holds.
    pub(crate) fn gpu_pids(&self) -> Result<Vec<u32>> {
        query(&self.db, "SELECT DISTINCT pid FROM gpu_ops ORDER BY pid", |r| r.get(0))
            .with_context(|| about(&self.path, "cannot read table gpu_ops"))
    }

    pub(crate) fn meta(&self) -> Result<Vec<(String, String)>> {
        query(&self.db, "SELECT key, value FROM meta ORDER BY key", |r| Ok((r.get(0)?, r.get(1)?)))
            .with_context(|| about(&self.path, "cannot read table meta"))
    }

    /// Every row of `T`'s table.
    pub(crate) fn all<T: Stored>(&self) -> Result<Vec<T>> {
        let mut rows = Vec::new();
        self.stream(usize::MAX, |chunk: Vec<T>| {
            rows.extend(chunk);
            Ok(())
        })?;
        Ok(rows)
    }

    /// Hands the rows of `T`'s table to `sink` in chunks of at most `chunk` rows; returns how many
    /// there were. Errors from `sink` pass through unchanged.
    pub(crate) fn stream<T: Stored>(&self, chunk: usize, mut sink: impl FnMut(Vec<T>) -> Result<()>) -> Result<u64> {
        if self.version < T::SINCE {
            return Ok(0);
        }
        let err = |e| self.read_error(T::TABLE, e);
        let mut statement = self.db.prepare(T::select(self.version)).map_err(err)?;
        let mut rows = statement.query([]).map_err(err)?;
        let mut buffer = Vec::new();
        let mut count = 0;
        while let Some(row) = rows.next().map_err(err)? {
            buffer.push(T::read(row, &self.names).map_err(err)?);
            count += 1;
            if buffer.len() >= chunk {
                sink(std::mem::take(&mut buffer))?;
            }
        }
        if !buffer.is_empty() {
            sink(buffer)?;
        }
        Ok(count)
    }

    fn read_error(&self, table: &str, e: rusqlite::Error) -> anyhow::Error {
        match e {
            rusqlite::Error::FromSqlConversionFailure(_, _, cause) => anyhow!("trace {}: table {table}: {cause}", self.path.display()),
            e => anyhow::Error::new(e).context(about(&self.path, &format!("cannot read table {table}"))),
        }
    }
}

/// The latest time a row may carry, in ns: 2^62, so that every time and every difference of two
/// fits a signed 64-bit integer (a negative time read back as unsigned lands beyond it).
pub const MAX_TIME_NS: u64 = 1 << 62;

/// The most allocations or frees one iteration may count (2^40: no process makes a trillion).
pub const MAX_COUNT: u64 = 1 << 40;

/// Reads a whole trace. Rows whose times or counts cannot be (an end before its start, a time beyond
/// [`MAX_TIME_NS`], which is also where a negative time lands) are left out and counted in meta
/// `rows_skipped`, so that no absurd figure reaches a report.
pub fn read_trace(path: &Path) -> Result<TraceData> {
    let r = TraceReader::open(path)?;
    let mut t = TraceData {
        meta: r.meta()?,
        threads: r.all()?,
        spans: r.all()?,
        marks: r.all()?,
        counters: r.all()?,
        iterations: r.all()?,
        requests: r.all()?,
        allocations: r.all()?,
        expert_loads: r.all()?,
        processes: r.all()?,
        gpu_ops: r.all()?,
        api_calls: r.all()?,
    };
    let sane = |start: u64, end: u64| start <= end && end <= MAX_TIME_NS;
    let mut skipped: Vec<String> = Vec::new();
    drop_impossible(&mut t.spans, "spans", |x| sane(x.start_ns, x.end_ns), &mut skipped);
    drop_impossible(&mut t.gpu_ops, "GPU operations", |x| sane(x.start_ns, x.end_ns), &mut skipped);
    drop_impossible(&mut t.api_calls, "API calls", |x| sane(x.start_ns, x.end_ns), &mut skipped);
    drop_impossible(&mut t.iterations, "iterations", |x| sane(x.start_ns, x.end_ns), &mut skipped);
    drop_impossible(&mut t.marks, "marks", |x| x.ts_ns <= MAX_TIME_NS, &mut skipped);
    drop_impossible(&mut t.counters, "counter samples", |x| x.ts_ns <= MAX_TIME_NS && x.value.is_finite(), &mut skipped);
    drop_impossible(&mut t.requests, "requests", |x| sane(x.arrival_ns, x.end_ns), &mut skipped);
    drop_impossible(&mut t.allocations, "allocation rows", |x| x.count.max(x.frees) <= MAX_COUNT, &mut skipped);
    if !skipped.is_empty() {
        t.meta.retain(|(k, _)| k != "rows_skipped");
        t.meta.push(("rows_skipped".into(), format!("{} with impossible times or values", skipped.join(", "))));
    }
    Ok(t)
}

/// Removes the rows of `rows` that are not `possible`, noting how many (`"3 spans"`) in `skipped`.
fn drop_impossible<T>(rows: &mut Vec<T>, what: &str, possible: impl Fn(&T) -> bool, skipped: &mut Vec<String>) {
    let before = rows.len();
    rows.retain(|r| possible(r));
    if rows.len() < before {
        skipped.push(format!("{} {what}", before - rows.len()));
    }
}

/// The meta rows of a trace, without reading its other tables.
pub fn read_meta(path: &Path) -> Result<Vec<(String, String)>> {
    TraceReader::open(path)?.meta()
}

fn query<T>(db: &Connection, sql: &str, f: impl FnMut(&Row) -> rusqlite::Result<T>) -> rusqlite::Result<Vec<T>> {
    db.prepare(sql)?.query_map([], f)?.collect()
}

/// Row counts per table, for `lumen trace info`.
pub fn table_counts(path: &Path) -> Result<Vec<(String, i64)>> {
    let r = TraceReader::open(path)?;
    let tables = [
        "processes",
        "threads",
        "spans",
        "marks",
        "counters",
        "iterations",
        "requests",
        "gpu_ops",
        "api_calls",
        "allocations",
        "expert_load",
        "strings",
    ];
    tables
        .iter()
        .map(|t| {
            // Tables newer than the file's schema count as empty.
            let exists: bool =
                r.db.query_row("SELECT COUNT(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1", [t], |row| row.get(0))
                    .with_context(|| about(path, "cannot list its tables"))?;
            if !exists {
                return Ok((t.to_string(), 0));
            }
            r.db.query_row(&format!("SELECT COUNT(*) FROM {t}"), [], |row| row.get(0))
                .map(|n| (t.to_string(), n))
                .with_context(|| about(path, "cannot count"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("lumen-store-{}-{name}.lumen", std::process::id()))
    }

    #[test]
    fn rows_with_impossible_times_are_left_out_and_counted() {
        let path = temp("impossible");
        let _ = std::fs::remove_file(&path);
        let mut w = TraceWriter::create(&path, &[]).unwrap();
        let backwards = GpuOpRow { end_ns: 100, ..kernel(500, 1) };
        let negative = GpuOpRow { start_ns: u64::MAX - 10, end_ns: u64::MAX, ..kernel(0, 2) };
        w.append_gpu(&GpuBatch { gpu_ops: &[kernel(1_000, 3), backwards, negative], ..Default::default() }).unwrap();
        w.append(&Batch { spans: &[span(10, 5, "backwards", 0, None), span(10, 20, "fine", 0, None)], ..Default::default() }).unwrap();
        let absurd =
            AllocationRow { iteration: 1, count: 485_440_633_518_672_384, bytes: 1, frees: 0, kv_blocks_allocated: 0, kv_blocks_freed: 0 };
        w.append(&Batch { allocations: &[absurd], ..Default::default() }).unwrap();
        w.finish().unwrap();
        let t = read_trace(&path).unwrap();
        assert_eq!(t.gpu_ops.iter().map(|g| g.correlation).collect::<Vec<_>>(), [Some(3)]);
        assert_eq!(t.spans.iter().map(|x| x.name.as_str()).collect::<Vec<_>>(), ["fine"]);
        assert_eq!(t.meta("rows_skipped"), Some("1 spans, 2 GPU operations, 1 allocation rows with impossible times or values"));
        assert!(t.allocations.is_empty());
        std::fs::remove_file(&path).unwrap();
    }

    fn span(start: u64, end: u64, name: &str, depth: u32, iteration: Option<u64>) -> SpanRow {
        SpanRow { start_ns: start, end_ns: end, tid: 7, name: name.into(), category: "phase".into(), depth, iteration, args: None }
    }

    fn kernel(start_ns: u64, correlation: u64) -> GpuOpRow {
        GpuOpRow {
            kind: GpuOpKind::Kernel,
            start_ns,
            end_ns: start_ns + 500,
            pid: 4242,
            device: 0,
            stream: Some(7),
            correlation: Some(correlation),
            name: "ampere_bf16_gemm_128x64".into(),
            grid: Some([128, 2, 1]),
            block: Some([256, 1, 1]),
            registers: Some(96),
            shared_mem_bytes: Some(49_152),
            bytes: None,
            copy_kind: None,
            pinned: None,
            graph_id: Some(3),
            graph_node_id: Some(11),
        }
    }

    /// One GPU op of every kind, with every optional field both set and unset somewhere.
    fn gpu_ops() -> Vec<GpuOpRow> {
        let none = GpuOpRow {
            grid: None,
            block: None,
            registers: None,
            shared_mem_bytes: None,
            graph_id: None,
            graph_node_id: None,
            correlation: None,
            ..kernel(0, 0)
        };
        vec![
            kernel(1_000, 21),
            GpuOpRow {
                kind: GpuOpKind::Memcpy,
                start_ns: 2_000,
                end_ns: 2_600,
                name: "memcpy HtoD".into(),
                correlation: Some(22),
                bytes: Some(u64::MAX),
                copy_kind: Some("HtoD".into()),
                pinned: Some(true),
                ..none.clone()
            },
            GpuOpRow {
                kind: GpuOpKind::Memset,
                start_ns: 3_000,
                end_ns: 3_100,
                name: "memset".into(),
                device: 1,
                stream: None,
                bytes: Some(4096),
                pinned: Some(false),
                ..none.clone()
            },
            GpuOpRow { kind: GpuOpKind::Sync, start_ns: 3_500, end_ns: 4_000, name: "stream sync".into(), ..none.clone() },
            GpuOpRow { kind: GpuOpKind::Graph, start_ns: 5_000, end_ns: 9_000, name: "graph 3".into(), graph_id: Some(3), ..none },
        ]
    }

    fn api_calls() -> Vec<ApiCallRow> {
        vec![
            ApiCallRow {
                start_ns: 900,
                end_ns: 990,
                pid: 4242,
                tid: 4243,
                name: "cudaLaunchKernel".into(),
                correlation: Some(21),
                result: Some(0),
            },
            ApiCallRow { start_ns: 1_900, end_ns: 2_700, pid: 4242, tid: 4243, name: "cudaMemcpy".into(), correlation: None, result: None },
            ApiCallRow {
                start_ns: 1_950,
                end_ns: 2_650,
                pid: 4242,
                tid: 4243,
                name: "cuMemcpyHtoD_v2".into(),
                correlation: Some(22),
                result: Some(-1),
            },
        ]
    }

    #[test]
    fn rows_round_trip_and_sql_sees_them() {
        let path = temp("roundtrip");
        let mut w = TraceWriter::create(&path, &[("command".into(), "lumen bench".into())]).unwrap();
        let spans = [span(10, 50, "iter 0: 1 ctx reqs, 0 gen reqs", 0, Some(0)), span(12, 20, "forward", 1, Some(0))];
        let first = IterationRow {
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
            queued_reqs: Some(5),
            weight_bytes: Some(16_060_522_496),
            kv_bytes_read: Some(1 << 40),
            flops: Some(2.0546e12),
            fp8_flops: Some(1.9e12),
            attention_flops: Some(1.2e10),
        };
        // The second row has none of the work fields: they stay NULL.
        let second = IterationRow { iter: 1, start_ns: 50, end_ns: 60, host_ms: 0.01, device_ms: Some(0.008), ..Default::default() };
        let iterations = [first, second];
        let threads = [(7u64, "lumen-engine".to_string())];
        w.append(&Batch { threads: &threads, spans: &spans, iterations: &iterations, ..Default::default() }).unwrap();
        let counters = [CounterRow { ts_ns: 30, name: "kv_util".into(), device: None, value: 0.25 }];
        let expert_loads = [
            ExpertLoadRow { iteration: 0, layer: 0, tokens: vec![5, 0, 9, 4] },
            ExpertLoadRow { iteration: 0, layer: 1, tokens: vec![2, 2, 3, 11] },
        ];
        w.append(&Batch { counters: &counters, expert_loads: &expert_loads, ..Default::default() }).unwrap();
        w.finish().unwrap();
        let t = read_trace(&path).unwrap();
        assert_eq!(t.expert_loads, expert_loads.to_vec());
        assert_eq!(t.meta("complete"), Some("true"));
        assert_eq!(t.meta("command"), Some("lumen bench"));
        assert_eq!(t.meta("schema_version"), Some(SCHEMA_VERSION));
        assert_eq!(t.spans, spans.to_vec());
        assert_eq!(t.iterations, iterations.to_vec());
        assert_eq!(t.counters, counters.to_vec());
        assert_eq!(t.threads, [ThreadRow { pid: std::process::id(), tid: 7, name: "lumen-engine".into() }]);
        let db = Connection::open(&path).unwrap();
        let util: f64 = db.query_row("SELECT kv_util FROM iterations WHERE iter = 0", [], |r| r.get(0)).unwrap();
        assert_eq!(util, 0.25);
        let work = "SELECT queued_reqs, weight_bytes, kv_bytes_read, flops FROM iterations WHERE iter = ?1";
        type Work = (Option<i64>, Option<i64>, Option<i64>, Option<f64>);
        let row = |iter: i64| -> Work { db.query_row(work, [iter], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap() };
        assert_eq!(row(0), (Some(5), Some(16_060_522_496), Some(1 << 40), Some(2.0546e12)));
        assert_eq!(row(1), (None, None, None, None));
        let name: String = db.query_row("SELECT name FROM span_names WHERE depth = 1", [], |r| r.get(0)).unwrap();
        assert_eq!(name, "forward");
        let busiest = "SELECT layer, MAX(e.value) FROM expert_load, json_each(expert_load.tokens) e GROUP BY layer ORDER BY layer";
        let per_layer: Vec<(i64, i64)> = query(&db, busiest, |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!(per_layer, [(0, 9), (1, 11)]);
        assert!(!wal_path(&path, "-wal").exists(), "a finished trace is one file");
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn gpu_rows_round_trip_and_sql_sees_them() {
        let path = temp("gpu-roundtrip");
        let meta = [("schema_version".to_string(), "99".to_string()), ("complete".to_string(), "true".to_string())];
        let mut w = TraceWriter::create(&path, &meta).unwrap();
        let processes = [ProcessRow { pid: 4242, name: "python serve.py".into() }, ProcessRow { pid: 17, name: "lumen".into() }];
        let threads = [ThreadRow { pid: 4242, tid: 4243, name: "python".into() }];
        let (ops, calls) = (gpu_ops(), api_calls());
        // In two batches, out of time order, so the reader's order is shown.
        w.append_gpu(&GpuBatch { processes: &processes, threads: &threads, gpu_ops: &ops[2..], api_calls: &calls[1..] }).unwrap();
        w.append_gpu(&GpuBatch { gpu_ops: &ops[..2], api_calls: &calls[..1], ..Default::default() }).unwrap();
        w.finish().unwrap();

        let t = read_trace(&path).unwrap();
        assert_eq!(t.meta("schema_version"), Some(SCHEMA_VERSION), "meta cannot override the schema version");
        assert_eq!(t.gpu_ops, ops);
        assert_eq!(t.api_calls, calls);
        assert_eq!(t.threads, threads);
        assert_eq!(t.processes, [processes[1].clone(), processes[0].clone()]);

        let db = Connection::open(&path).unwrap();
        let (kind, duration, name, grid, block): (String, i64, String, String, String) = db
            .query_row("SELECT kind, duration, name, grid, block FROM gpu_op_names WHERE correlation = 21", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap();
        assert_eq!(
            (kind.as_str(), duration, name.as_str(), grid.as_str(), block.as_str()),
            ("kernel", 500, ops[0].name.as_str(), "128,2,1", "256,1,1")
        );
        let launched: String = db
            .query_row(
                "SELECT a.name FROM gpu_op_names g JOIN api_call_names a ON a.pid = g.pid AND a.correlation = g.correlation
                 WHERE g.kind = 'memcpy'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(launched, "cuMemcpyHtoD_v2");
        let plan: String =
            db.query_row("EXPLAIN QUERY PLAN SELECT * FROM gpu_ops WHERE correlation = 21 AND pid = 4242", [], |r| r.get(3)).unwrap();
        assert!(plan.contains("gpu_ops_by_correlation"), "{plan}");
        let names: i64 = db.query_row("SELECT COUNT(*) FROM strings WHERE value = 'ampere_bf16_gemm_128x64'", [], |r| r.get(0)).unwrap();
        assert_eq!(names, 1, "names are interned");
        drop(db);

        let counts = table_counts(&path).unwrap();
        let count = |table: &str| counts.iter().find(|(t, _)| t == table).map(|(_, n)| *n);
        assert_eq!((count("gpu_ops"), count("api_calls"), count("processes")), (Some(5), Some(3), Some(2)));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn tables_stream_in_chunks() {
        let path = temp("chunks");
        let mut w = TraceWriter::create(&path, &[]).unwrap();
        let ops: Vec<GpuOpRow> = (0..10).map(|i| kernel(i * 1000, i)).collect();
        w.append_gpu(&GpuBatch { gpu_ops: &ops, ..Default::default() }).unwrap();
        w.finish().unwrap();
        let r = TraceReader::open(&path).unwrap();
        let mut sizes = Vec::new();
        let mut rows = Vec::new();
        let n = r
            .stream(4, |chunk: Vec<GpuOpRow>| {
                sizes.push(chunk.len());
                rows.extend(chunk);
                Ok(())
            })
            .unwrap();
        assert_eq!((n, sizes, rows), (10, vec![4, 4, 2], ops));
        let e = format!("{:#}", r.stream(4, |_: Vec<GpuOpRow>| Err(anyhow!("sink refused"))).unwrap_err());
        assert_eq!(e, "sink refused");
        std::fs::remove_file(path).unwrap();
    }

    /// The version-1 schema, as lumen wrote it before `gpu_ops` and `api_calls` gained their
    /// `pid` (and `gpu_ops` its `pinned`) column.
    const SCHEMA_V1: &str = "
        CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE strings(id INTEGER PRIMARY KEY, value TEXT NOT NULL UNIQUE);
        CREATE TABLE processes(pid INTEGER PRIMARY KEY, name TEXT NOT NULL);
        CREATE TABLE threads(tid INTEGER PRIMARY KEY, pid INTEGER NOT NULL, name TEXT NOT NULL);
        CREATE TABLE spans(start INTEGER NOT NULL, end INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL, category INTEGER NOT NULL,
                           depth INTEGER NOT NULL, iteration INTEGER, args TEXT);
        CREATE TABLE marks(ts INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL, category INTEGER NOT NULL, iteration INTEGER,
                           args TEXT);
        CREATE TABLE gpu_ops(kind TEXT NOT NULL, start INTEGER NOT NULL, end INTEGER NOT NULL, device INTEGER, stream INTEGER,
                             correlation INTEGER, name INTEGER, grid TEXT, block TEXT, regs INTEGER, smem INTEGER, bytes INTEGER,
                             copy_kind TEXT, graph_id INTEGER, graph_node_id INTEGER);
        CREATE TABLE api_calls(start INTEGER NOT NULL, end INTEGER NOT NULL, tid INTEGER NOT NULL, name INTEGER NOT NULL,
                               correlation INTEGER, result INTEGER);
        CREATE TABLE counters(ts INTEGER NOT NULL, name INTEGER NOT NULL, device INTEGER, value REAL NOT NULL);
        CREATE TABLE iterations(iter INTEGER PRIMARY KEY, start INTEGER NOT NULL, end INTEGER NOT NULL, ctx_reqs INTEGER NOT NULL,
                                gen_reqs INTEGER NOT NULL, ctx_tokens INTEGER NOT NULL, gen_tokens INTEGER NOT NULL,
                                kv_used_blocks INTEGER NOT NULL, kv_total_blocks INTEGER NOT NULL, kv_util REAL NOT NULL,
                                host_ms REAL NOT NULL, device_ms REAL);
        CREATE TABLE requests(id INTEGER PRIMARY KEY, arrival INTEGER NOT NULL, first_token INTEGER, end INTEGER NOT NULL,
                              input_len INTEGER NOT NULL, output_len INTEGER NOT NULL);
        CREATE TABLE allocations(iteration INTEGER NOT NULL, count INTEGER NOT NULL, bytes INTEGER NOT NULL, frees INTEGER NOT NULL,
                                 kv_blocks_allocated INTEGER NOT NULL, kv_blocks_freed INTEGER NOT NULL);
        INSERT INTO meta VALUES ('schema_version', '1'), ('complete', 'true'), ('command', 'lumen bench');
        INSERT INTO strings VALUES (1, 'forward'), (2, 'phase');
        INSERT INTO threads VALUES (7, 4242, 'lumen-engine');
        INSERT INTO spans VALUES (10, 20, 7, 1, 2, 1, 0, NULL);
    ";

    #[test]
    fn version_1_files_still_open_and_newer_ones_are_refused() {
        let path = temp("v1");
        Connection::open(&path).unwrap().execute_batch(SCHEMA_V1).unwrap();
        let t = read_trace(&path).unwrap();
        assert_eq!(t.meta("schema_version"), Some("1"));
        assert_eq!(t.spans, [span(10, 20, "forward", 1, Some(0))]);
        assert_eq!(t.threads.len(), 1);
        assert!(t.gpu_ops.is_empty() && t.api_calls.is_empty() && t.processes.is_empty());
        assert!(t.expert_loads.is_empty());
        let counts = table_counts(&path).unwrap();
        let count = |table: &str| counts.iter().find(|(t, _)| t == table).map(|(_, n)| *n);
        assert_eq!((count("spans"), count("expert_load")), (Some(1), Some(0)));

        Connection::open(&path).unwrap().execute("UPDATE meta SET value = '7' WHERE key = 'schema_version'", []).unwrap();
        let e = format!("{:#}", read_trace(&path).unwrap_err());
        assert!(e.contains(&path.display().to_string()) && e.contains("schema version 7") && e.contains("versions 1 to 6"), "{e}");
        std::fs::remove_file(path).unwrap();
    }

    /// The version-2 `iterations` table, before it gained the work columns.
    const ITERATIONS_V2: &str = "
        CREATE TABLE iterations(iter INTEGER PRIMARY KEY, start INTEGER NOT NULL, end INTEGER NOT NULL, ctx_reqs INTEGER NOT NULL,
                                gen_reqs INTEGER NOT NULL, ctx_tokens INTEGER NOT NULL, gen_tokens INTEGER NOT NULL,
                                kv_used_blocks INTEGER NOT NULL, kv_total_blocks INTEGER NOT NULL, kv_util REAL NOT NULL,
                                host_ms REAL NOT NULL, device_ms REAL);
        INSERT INTO iterations VALUES (4, 100, 900, 2, 6, 64, 6, 10, 40, 0.25, 0.8, 0.5);
        INSERT INTO meta VALUES ('schema_version', '2'), ('complete', 'true');
    ";

    #[test]
    fn version_2_files_open_with_the_work_fields_unset() {
        let path = temp("v2");
        // The version-2 schema is today's with the iterations table of version 2.
        let start = SCHEMA.find("CREATE TABLE iterations").unwrap();
        let end = start + SCHEMA[start..].find(";").unwrap() + 1;
        let v2 = format!("{}{}{}", &SCHEMA[..start], &SCHEMA[end..], ITERATIONS_V2);
        Connection::open(&path).unwrap().execute_batch(&v2).unwrap();
        let t = read_trace(&path).unwrap();
        assert_eq!(t.meta("schema_version"), Some("2"));
        let want = IterationRow {
            iter: 4,
            start_ns: 100,
            end_ns: 900,
            ctx_reqs: 2,
            gen_reqs: 6,
            ctx_tokens: 64,
            gen_tokens: 6,
            kv_used_blocks: 10,
            kv_total_blocks: 40,
            host_ms: 0.8,
            device_ms: Some(0.5),
            queued_reqs: None,
            weight_bytes: None,
            kv_bytes_read: None,
            flops: None,
            fp8_flops: None,
            attention_flops: None,
        };
        assert_eq!(t.iterations, [want]);
        std::fs::remove_file(path).unwrap();
    }

    /// Today's schema with the iterations table of an older version: `columns` is the tail of
    /// today's column list to drop, `row` that version's iteration row, `version` its number.
    fn older_iterations_table(path: &Path, columns: &str, row: &str, version: &str) {
        let start = SCHEMA.find("CREATE TABLE iterations").unwrap();
        let end = start + SCHEMA[start..].find(";").unwrap() + 1;
        let old_table = SCHEMA[start..end].replace(columns, ")");
        assert_ne!(old_table, &SCHEMA[start..end], "the table has the columns to take out");
        let old = format!(
            "{}{old_table}{}INSERT INTO iterations VALUES ({row});
             INSERT INTO meta VALUES ('schema_version', '{version}'), ('complete', 'true');",
            &SCHEMA[..start],
            &SCHEMA[end..]
        );
        Connection::open(path).unwrap().execute_batch(&old).unwrap();
    }

    #[test]
    fn version_4_files_open_with_their_work_and_no_fp8_share() {
        let path = temp("v4");
        let row = "4, 100, 900, 2, 6, 64, 6, 10, 40, 0.25, 0.8, 0.5, 3, 7000, 9000, 2.5e9";
        older_iterations_table(&path, ", fp8_flops REAL,\n                        attention_flops REAL)", row, "4");
        let t = read_trace(&path).unwrap();
        let row = &t.iterations[0];
        assert_eq!(
            (row.queued_reqs, row.weight_bytes, row.kv_bytes_read, row.flops, row.fp8_flops, row.attention_flops),
            (Some(3), Some(7000), Some(9000), Some(2.5e9), None, None)
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn version_5_files_open_with_their_fp8_share_and_no_attention_share() {
        let path = temp("v5");
        let row = "4, 100, 900, 2, 6, 64, 6, 10, 40, 0.25, 0.8, 0.5, 3, 7000, 9000, 2.5e9, 2.0e9";
        older_iterations_table(&path, ",\n                        attention_flops REAL)", row, "5");
        let t = read_trace(&path).unwrap();
        let row = &t.iterations[0];
        assert_eq!((row.flops, row.fp8_flops, row.attention_flops), (Some(2.5e9), Some(2.0e9), None));
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_gpu_values_are_named() {
        let path = temp("bad-gpu");
        let cases = [
            ("UPDATE gpu_ops SET kind = 'tensor core'", "table gpu_ops: unknown GPU op kind \"tensor core\""),
            ("UPDATE gpu_ops SET grid = '1,2'", "table gpu_ops: grid \"1,2\" is not x,y,z"),
            ("UPDATE gpu_ops SET block = '1,2,3,4'", "table gpu_ops: block \"1,2,3,4\" is not x,y,z"),
            ("UPDATE gpu_ops SET name = 999", "table gpu_ops: string id 999 is not in the strings table"),
            ("UPDATE gpu_ops SET pid = -1", "cannot read table gpu_ops"),
        ];
        for (update, want) in cases {
            let mut w = TraceWriter::create(&path, &[]).unwrap();
            w.append_gpu(&GpuBatch { gpu_ops: &[kernel(0, 1)], ..Default::default() }).unwrap();
            w.finish().unwrap();
            Connection::open(&path).unwrap().execute_batch(&format!("PRAGMA foreign_keys = OFF; {update};")).unwrap();
            let e = format!("{:#}", read_trace(&path).unwrap_err());
            assert!(e.starts_with(&format!("trace {}: ", path.display())) && e.contains(want), "{update}: {e}");
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn bad_files_are_named() {
        let path = temp("garbage");
        std::fs::write(&path, b"this is not sqlite at all, just text that goes on for a while").unwrap();
        let e = format!("{:#}", read_trace(&path).unwrap_err());
        assert!(e.contains("not a lumen trace") && e.contains("garbage"), "{e}");
        let e = format!("{:#}", read_trace(Path::new("/nonexistent/x.lumen")).unwrap_err());
        assert!(e.contains("no such file"), "{e}");
        let other = temp("other");
        Connection::open(&other).unwrap().execute_batch("CREATE TABLE t(x); CREATE TABLE meta(key, value);").unwrap();
        let e = format!("{:#}", read_trace(&other).unwrap_err());
        assert!(e.contains("no schema_version"), "{e}");
        std::fs::remove_file(path).unwrap();
        std::fs::remove_file(other).unwrap();
    }
}
