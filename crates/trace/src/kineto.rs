//! Import of torch.profiler traces: the Chrome-trace JSON that Kineto writes
//! (`prof.export_chrome_trace(...)`, `{"traceEvents": [...], "deviceProperties": [...], ...}`),
//! turned into the rows of a `.lumen` trace so that `lumen analyze` and the exporters read it.
//!
//! The file is read as a stream: serde visits the top-level object and the `traceEvents` array one
//! event at a time, each event into a small struct whose names and categories are interned, and
//! GPU operations, API calls and instant events go to the SQLite writer in batches. Only CPU ranges
//! stay in memory until the end, to get their nesting depth and the `ProfilerStep` iterations.
//!
//! What becomes what:
//! - complete events (`ph: "X"`) of category `kernel`, `gpu_memcpy`, `gpu_memset` and
//!   `cuda_sync` are GPU operations (device, stream, correlation id, grid, block, registers,
//!   shared memory, bytes; a copy's direction and pinned or pageable host memory come from its
//!   name, `Memcpy HtoD (Pageable -> Device)`). Kineto puts them in a process per device; lumen gives
//!   them the pid of the host process, as the CUPTI collector does, so that the correlation id
//!   joins each one to the `cuda_runtime` or `cuda_driver` call that launched it;
//! - `cuda_runtime` and `cuda_driver` events are API calls on their CPU thread;
//! - `cpu_op`, `user_annotation` and `python_function` events (`Operator` in old versions) are
//!   spans on their thread, nested by time, like the NVTX ranges of `lumen profile`;
//!   `ProfilerStep#N` ones are also iteration N. An operator recorded with its input shapes
//!   (`record_shapes=True`) gets its work as the span's args, `{"flops":F,"bytes":B}`: the bytes
//!   of its tensor inputs and output, and the FLOPs of matrix products (or the profiler's own
//!   `flops`), with `"fp32":true` for products of `float` inputs (FP32 math, not the tensor
//!   pipes), so the analyzer can put its kernels' rates against the GPU's peaks. A step written without a duration lasts until
//!   the next step of its thread starts (the last one until its thread's last event ends). Its
//!   device time runs from the first start to the last end of the GPU work whose launch call
//!   started inside it, as CUDA events around the step would measure it;
//! - instant events (`ph: "i"`) are marks; `process_name` and `thread_name` metadata name the host
//!   processes and threads; `deviceProperties[].name` is meta `gpu`.
//!
//! Timestamps are microseconds (numbers, or strings in some versions) after the trace's
//! `baseTimeNanoseconds`; they become whole nanoseconds after that base, which meta
//! `kineto_base_time_ns` keeps, so `1000010.123` is 1000010123 ns. Flows (`ac2g`), profiler
//! bookkeeping (`Trace`, `overhead`, `cuda_profiler_range`), `gpu_user_annotation` ranges (the
//! GPU-side copies of annotations; spans are CPU ranges) and other categories have no rows and
//! are counted as ignored; events that cannot be used (an `X` event without `ts` or `dur`, a GPU
//! operation without a name, a negative time) are skipped and counted by reason, in meta
//! `kineto_skipped` and in the [`ImportSummary`]. A file that is not JSON, not an object or has no
//! `traceEvents` array is an error naming the file.

use crate::merge::{CLOCK_KEY, KINETO_CLOCK};
use crate::model::{ApiCallRow, GpuOpKind, GpuOpRow, IterationRow, MarkRow, ProcessRow, SpanRow, ThreadRow};
use crate::store::{wal_path, Batch, GpuBatch, TraceWriter};
use anyhow::{bail, Context, Result};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

/// Rows written to the store per transaction.
const BATCH_ROWS: usize = 65_536;

/// What one import produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImportSummary {
    pub events: u64,
    pub kernels: u64,
    /// Kernels without a correlation id: kept, but no launch call can be joined to them.
    pub kernels_without_correlation: u64,
    pub memcpys: u64,
    pub memsets: u64,
    pub syncs: u64,
    pub api_calls: u64,
    pub spans: u64,
    pub marks: u64,
    pub iterations: u64,
    /// `ProfilerStep` events without a duration, extended to the next step.
    pub steps_extended: u64,
    /// Events lumen has no rows for, per kind (`flow`, `X Trace`, ...).
    pub ignored: BTreeMap<String, u64>,
    /// Events that could not be used, per reason.
    pub skipped: BTreeMap<String, u64>,
    /// The pid given to GPU operations: the host process's.
    pub host_pid: Option<u32>,
    /// Host processes with API calls beyond the first: their launches cannot be told apart.
    pub other_host_pids: Vec<u32>,
    /// API calls of the host process whose correlation id an earlier call already had: GPU work
    /// with that id cannot be joined to the right one.
    pub correlation_collisions: u64,
}

impl ImportSummary {
    pub fn ignored_total(&self) -> u64 {
        self.ignored.values().sum()
    }

    pub fn skipped_total(&self) -> u64 {
        self.skipped.values().sum()
    }
}

/// `counts` as `3 reason a, 1 reason b`, most first.
pub fn describe_counts(counts: &BTreeMap<String, u64>) -> String {
    let mut sorted: Vec<(&String, &u64)> = counts.iter().collect();
    sorted.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    sorted.iter().map(|(what, n)| format!("{n} {what}")).collect::<Vec<_>>().join(", ")
}

/// Converts the Kineto trace `input` into the `.lumen` trace `output` (replaced if it exists; it
/// may not be `input`). On error nothing is left at `output`.
pub fn import_kineto(input: &Path, output: &Path) -> Result<ImportSummary> {
    let file = File::open(input).with_context(|| format!("kineto trace {}: cannot open", input.display()))?;
    if let (Ok(a), Ok(b)) = (input.canonicalize(), output.canonicalize()) {
        if a == b {
            bail!("kineto trace {}: the output is the input; name another .lumen file with -o", input.display());
        }
    }
    let meta = vec![("source".to_string(), "kineto import".to_string()), ("input".to_string(), input.display().to_string())];
    let writer = TraceWriter::create(output, &meta)?;
    let result = Importer::new(writer).run(input, BufReader::with_capacity(1 << 20, file));
    if result.is_err() {
        for p in [output.to_path_buf(), wal_path(output, "-wal"), wal_path(output, "-shm")] {
            let _ = std::fs::remove_file(p);
        }
    }
    result
}

/// Interned strings: each distinct name is stored once and referred to by index.
#[derive(Default)]
struct Strings {
    ids: HashMap<Box<str>, u32>,
    values: Vec<Box<str>>,
}

impl Strings {
    fn intern(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.values.len() as u32;
        self.values.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }

    fn get(&self, id: u32) -> &str {
        &self.values[id as usize]
    }
}

/// What an event's category makes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Category {
    Kernel,
    Memcpy,
    Memset,
    Sync,
    Api,
    HostRange,
    Other,
}

impl Category {
    fn of(cat: &str) -> Category {
        let is = |names: &[&str]| names.iter().any(|n| cat.eq_ignore_ascii_case(n));
        if is(&["kernel"]) {
            Category::Kernel
        } else if is(&["gpu_memcpy", "memcpy"]) {
            Category::Memcpy
        } else if is(&["gpu_memset", "memset"]) {
            Category::Memset
        } else if is(&["cuda_sync"]) {
            Category::Sync
        } else if is(&["cuda_runtime", "cuda_driver", "runtime", "driver"]) {
            Category::Api
        } else if is(&["cpu_op", "operator", "user_annotation", "python_function"]) {
            Category::HostRange
        } else {
            Category::Other
        }
    }
}

/// An event's phase (`ph`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum Phase {
    #[default]
    Missing,
    Complete,
    Metadata,
    Instant,
    Flow,
    Other,
}

/// A JSON value read leniently: a field of an unexpected type reads as something the
/// conversions below turn into `None`, never as an error. Only small fields are read this way.
#[derive(Debug, Clone, PartialEq)]
enum Loose {
    Null,
    Bool,
    U64(u64),
    I64(i64),
    F64(f64),
    Str(String),
    Seq(Vec<Loose>),
    Map(Vec<(String, Loose)>),
}

impl Loose {
    fn as_u64(&self) -> Option<u64> {
        match *self {
            Loose::U64(v) => Some(v),
            Loose::I64(v) => u64::try_from(v).ok(),
            Loose::F64(v) if v >= 0.0 && v.fract() == 0.0 && v < u64::MAX as f64 => Some(v as u64),
            Loose::Str(ref s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    fn as_f64(&self) -> Option<f64> {
        let v = match *self {
            Loose::U64(v) => v as f64,
            Loose::I64(v) => v as f64,
            Loose::F64(v) => v,
            Loose::Str(ref s) => s.trim().parse().ok()?,
            _ => return None,
        };
        v.is_finite().then_some(v)
    }

    fn as_u32(&self) -> Option<u32> {
        self.as_u64().and_then(|v| u32::try_from(v).ok())
    }

    fn as_dim3(&self) -> Option<[u32; 3]> {
        match self {
            Loose::Seq(v) if v.len() == 3 => Some([v[0].as_u32()?, v[1].as_u32()?, v[2].as_u32()?]),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }

    /// `Input Dims`: per input its shape, `None` for an input that has none (a list of tensors).
    fn as_dims(&self) -> Option<Vec<Option<Vec<u64>>>> {
        match self {
            Loose::Seq(inputs) => Some(
                inputs
                    .iter()
                    .map(|dims| match dims {
                        Loose::Seq(d) => d.iter().map(Loose::as_u64).collect(),
                        _ => None,
                    })
                    .collect(),
            ),
            _ => None,
        }
    }

    fn as_strings(&self) -> Option<Vec<String>> {
        match self {
            Loose::Seq(v) => Some(v.iter().map(|s| s.as_str().unwrap_or("").to_string()).collect()),
            _ => None,
        }
    }

    /// A process or thread id: a number, or a text ending in one (`stream 7`).
    fn as_id(&self) -> Option<u64> {
        match self {
            Loose::Str(s) => {
                let s = s.trim_end();
                s[s.trim_end_matches(|c: char| c.is_ascii_digit()).len()..].parse().ok()
            }
            other => other.as_u64(),
        }
    }

    fn get(&self, key: &str) -> Option<&Loose> {
        match self {
            Loose::Map(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }
}

struct LooseVisitor;

impl<'de> Visitor<'de> for LooseVisitor {
    type Value = Loose;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<Loose, E> {
        Ok(Loose::Bool)
    }

    fn visit_u64<E>(self, v: u64) -> Result<Loose, E> {
        Ok(Loose::U64(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Loose, E> {
        Ok(Loose::I64(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Loose, E> {
        Ok(Loose::F64(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Loose, E> {
        Ok(Loose::Str(v.to_string()))
    }

    fn visit_unit<E>(self) -> Result<Loose, E> {
        Ok(Loose::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Loose, A::Error> {
        let mut values = Vec::new();
        while let Some(v) = seq.next_element()? {
            values.push(v);
        }
        Ok(Loose::Seq(values))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose, A::Error> {
        let mut entries = Vec::new();
        while let Some((k, v)) = map.next_entry::<String, Loose>()? {
            entries.push((k, v));
        }
        Ok(Loose::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Loose {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(LooseVisitor)
    }
}

/// A map key, matched against the names a visitor wants without allocating.
struct Key<const N: usize>(&'static [&'static str; N]);

impl<'de, const N: usize> DeserializeSeed<'de> for Key<N> {
    /// The index of the key in the list, `N` for any other key.
    type Value = usize;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, const N: usize> Visitor<'de> for Key<N> {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E>(self, v: &str) -> Result<usize, E> {
        Ok(self.0.iter().position(|k| *k == v).unwrap_or(N))
    }
}

/// A string value interned, or `None` for a value of another type.
struct Interned<'a>(&'a mut Strings);

impl<'de> DeserializeSeed<'de> for Interned<'_> {
    type Value = Option<u32>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Option<u32>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Interned<'_> {
    type Value = Option<u32>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E>(self, v: &str) -> Result<Option<u32>, E> {
        Ok(Some(self.0.intern(v)))
    }

    fn visit_bool<E>(self, _: bool) -> Result<Option<u32>, E> {
        Ok(None)
    }

    fn visit_u64<E>(self, _: u64) -> Result<Option<u32>, E> {
        Ok(None)
    }

    fn visit_i64<E>(self, _: i64) -> Result<Option<u32>, E> {
        Ok(None)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Option<u32>, E> {
        Ok(None)
    }

    fn visit_unit<E>(self) -> Result<Option<u32>, E> {
        Ok(None)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Option<u32>, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| None)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Option<u32>, A::Error> {
        IgnoredAny.visit_map(map).map(|_| None)
    }
}

/// The fields of an event's `args` that lumen uses.
#[derive(Debug, Default)]
struct Args {
    correlation: Option<u64>,
    device: Option<u32>,
    /// `Some(None)` for a stream that is not one (Kineto writes -1 for a context-wide sync).
    stream: Option<Option<u64>>,
    grid: Option<[u32; 3]>,
    block: Option<[u32; 3]>,
    registers: Option<u32>,
    shared_memory: Option<u64>,
    bytes: Option<u64>,
    /// A metadata event's name: the process or thread name.
    name: Option<String>,
    /// An operator's input shapes and element types (`record_shapes=True`), and its FLOPs
    /// (`with_flops=True`).
    input_dims: Option<Vec<Option<Vec<u64>>>>,
    input_types: Option<Vec<String>>,
    flops: Option<f64>,
}

const ARG_KEYS: [&str; 12] = [
    "correlation",
    "device",
    "stream",
    "grid",
    "block",
    "registers per thread",
    "shared memory",
    "bytes",
    "name",
    "Input Dims",
    "Input type",
    "flops",
];

struct ArgsVisitor;

impl<'de> Visitor<'de> for ArgsVisitor {
    type Value = Args;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an args object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Args, A::Error> {
        let mut args = Args::default();
        while let Some(key) = map.next_key_seed(Key(&ARG_KEYS))? {
            if key == ARG_KEYS.len() {
                map.next_value::<IgnoredAny>()?;
                continue;
            }
            let v: Loose = map.next_value()?;
            match key {
                0 => args.correlation = v.as_u64(),
                1 => args.device = v.as_u32(),
                2 => args.stream = Some(v.as_u64()),
                3 => args.grid = v.as_dim3(),
                4 => args.block = v.as_dim3(),
                5 => args.registers = v.as_u32(),
                6 => args.shared_memory = v.as_u64(),
                7 => args.bytes = v.as_u64(),
                8 => args.name = v.as_str().map(str::to_string),
                9 => args.input_dims = v.as_dims(),
                10 => args.input_types = v.as_strings(),
                _ => args.flops = v.as_f64(),
            }
        }
        Ok(args)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Args, E> {
        Ok(Args::default())
    }

    fn visit_u64<E>(self, _: u64) -> Result<Args, E> {
        Ok(Args::default())
    }

    fn visit_i64<E>(self, _: i64) -> Result<Args, E> {
        Ok(Args::default())
    }

    fn visit_f64<E>(self, _: f64) -> Result<Args, E> {
        Ok(Args::default())
    }

    fn visit_str<E>(self, _: &str) -> Result<Args, E> {
        Ok(Args::default())
    }

    fn visit_unit<E>(self) -> Result<Args, E> {
        Ok(Args::default())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Args, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| Args::default())
    }
}

/// One trace event, the fields lumen uses.
#[derive(Debug, Default)]
struct Event {
    phase: Phase,
    cat: Option<u32>,
    name: Option<u32>,
    pid: Option<u64>,
    tid: Option<u64>,
    ts: Option<f64>,
    dur: Option<f64>,
    args: Args,
}

const EVENT_KEYS: [&str; 8] = ["ph", "cat", "name", "pid", "tid", "ts", "dur", "args"];

/// Reads one element of `traceEvents` and hands it to the importer.
struct EventSeed<'a>(&'a mut Importer);

impl<'de> DeserializeSeed<'de> for EventSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl EventSeed<'_> {
    fn not_an_object(self) {
        self.0.summary.events += 1;
        self.0.skip("trace events that are not JSON objects");
    }
}

impl<'de> Visitor<'de> for EventSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a trace event object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let importer = self.0;
        let mut ev = Event::default();
        while let Some(key) = map.next_key_seed(Key(&EVENT_KEYS))? {
            match key {
                0 => {
                    let ph: Loose = map.next_value()?;
                    ev.phase = match ph.as_str() {
                        Some("X") => Phase::Complete,
                        Some("M") => Phase::Metadata,
                        Some("i" | "I") => Phase::Instant,
                        Some("s" | "t" | "f") => Phase::Flow,
                        _ => Phase::Other,
                    }
                }
                1 => ev.cat = map.next_value_seed(Interned(&mut importer.strings))?,
                2 => ev.name = map.next_value_seed(Interned(&mut importer.strings))?,
                3 => ev.pid = map.next_value::<Loose>()?.as_id(),
                4 => ev.tid = map.next_value::<Loose>()?.as_id(),
                5 => ev.ts = map.next_value::<Loose>()?.as_f64(),
                6 => ev.dur = map.next_value::<Loose>()?.as_f64(),
                7 => ev.args = map.next_value_seed(ArgsSeed)?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        importer.event(ev).map_err(|e| {
            importer.failed = Some(e);
            de::Error::custom("the trace could not be written")
        })
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        self.not_an_object();
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        IgnoredAny.visit_seq(seq)?;
        self.not_an_object();
        Ok(())
    }
}

struct ArgsSeed;

impl<'de> DeserializeSeed<'de> for ArgsSeed {
    type Value = Args;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Args, D::Error> {
        d.deserialize_any(ArgsVisitor)
    }
}

/// The `traceEvents` array.
struct EventsSeed<'a>(&'a mut Importer);

impl<'de> DeserializeSeed<'de> for EventsSeed<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for EventsSeed<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("traceEvents to be an array of events")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(EventSeed(self.0))?.is_some() {}
        Ok(())
    }
}

const TOP_KEYS: [&str; 3] = ["traceEvents", "deviceProperties", "baseTimeNanoseconds"];

/// The top-level object.
struct TopVisitor<'a>(&'a mut Importer);

impl<'de> Visitor<'de> for TopVisitor<'_> {
    /// Whether the object had a `traceEvents` array.
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a Kineto trace: a JSON object with a traceEvents array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut events = false;
        while let Some(key) = map.next_key_seed(Key(&TOP_KEYS))? {
            match key {
                0 => {
                    map.next_value_seed(EventsSeed(self.0))?;
                    events = true;
                }
                1 => {
                    if let Loose::Seq(devices) = map.next_value()? {
                        for name in devices.iter().filter_map(|d| d.get("name")?.as_str()) {
                            if !self.0.gpus.iter().any(|g| g == name) {
                                self.0.gpus.push(name.to_string());
                            }
                        }
                    }
                }
                2 => self.0.base_time_ns = map.next_value::<Loose>()?.as_u64(),
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(events)
    }
}

/// A CPU range waiting for its depth.
struct PendingSpan {
    start_ns: u64,
    end_ns: u64,
    pid: u32,
    tid: u64,
    name: u32,
    cat: u32,
    /// An operator's work from its shapes, as the span's args.
    work: Option<OpWork>,
}

/// What an operator reads and writes and computes, from its recorded input shapes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct OpWork {
    flops: f64,
    bytes: u64,
    /// FP32 math: a matrix product of `float` inputs, which PyTorch runs on the FP32 pipes
    /// (TF32 is off for matrix products by default), so its ceiling is the FP32 peak.
    fp32: bool,
}

/// Bytes per element of a recorded input type; `None` for a type lumen does not size.
fn element_bytes(ty: &str) -> Option<u64> {
    match ty {
        "c10::BFloat16" | "c10::Half" | "short int" => Some(2),
        "float" | "int" | "unsigned int" => Some(4),
        "double" | "long int" | "long long int" | "c10::complex<float>" => Some(8),
        "bool" | "unsigned char" | "signed char" | "char" => Some(1),
        t if t.starts_with("c10::Float8") => Some(1),
        _ => None,
    }
}

/// An operator's work from its input shapes and types: the bytes of its tensor inputs plus its
/// output, and for the matrix products their FLOPs. The output is the product's `M × N`, else the
/// first input's shape, unless an input of that shape already follows it (an `out=` tensor).
/// `flops` from the profiler (`with_flops=True`) wins when given.
fn op_work(name: &str, dims: &[Option<Vec<u64>>], types: &[String], flops: Option<f64>) -> Option<OpWork> {
    let tensors: Vec<(&Vec<u64>, u64)> =
        dims.iter().zip(types).filter_map(|(d, t)| Some((d.as_ref().filter(|d| !d.is_empty())?, element_bytes(t)?))).collect();
    let (first, size) = *tensors.first()?;
    let numel = |d: &[u64]| d.iter().product::<u64>();
    let read: u64 = tensors.iter().map(|(d, s)| numel(d) * s).sum();
    let op = name.strip_prefix("aten::").unwrap_or(name);
    // (batch, M, K, N) of a matrix product.
    let product = match (op, tensors.as_slice()) {
        ("mm", [(a, _), (b, _), ..]) if a.len() == 2 && b.len() == 2 => Some((1, a[0], a[1], b[1])),
        ("addmm", [_, (a, _), (b, _), ..]) if a.len() == 2 && b.len() == 2 => Some((1, a[0], a[1], b[1])),
        ("bmm", [(a, _), (b, _), ..]) if a.len() == 3 && b.len() == 3 => Some((a[0], a[1], a[2], b[2])),
        ("baddbmm", [_, (a, _), (b, _), ..]) if a.len() == 3 && b.len() == 3 => Some((a[0], a[1], a[2], b[2])),
        _ => None,
    };
    let (written, computed) = match product {
        Some((batch, m, k, n)) => (batch * m * n * size, 2.0 * (batch * m * k * n) as f64),
        None if tensors[1..].iter().any(|(d, _)| *d == first) && tensors.len() >= 3 => (0, 0.0),
        None => (numel(first) * size, 0.0),
    };
    let fp32 = product.is_some() && types.first().is_some_and(|t| t == "float");
    let work = OpWork { flops: flops.unwrap_or(computed), bytes: read + written, fp32 };
    (work.bytes > 0).then_some(work)
}

/// A `ProfilerStep#N` range on the host.
struct Step {
    number: u64,
    /// Its index in `Importer::spans`.
    span: usize,
}

struct Importer {
    writer: TraceWriter,
    strings: Strings,
    categories: Vec<Option<Category>>,
    summary: ImportSummary,
    gpu_ops: Vec<GpuOpRow>,
    api_calls: Vec<ApiCallRow>,
    marks: Vec<MarkRow>,
    spans: Vec<PendingSpan>,
    steps: Vec<Step>,
    /// (pid, correlation id, start) of each API call with a correlation id.
    launches: Vec<(u32, u64, u64)>,
    /// (correlation id, start, end) of each kernel, copy and memset with a correlation id.
    launched: Vec<(u64, u64, u64)>,
    /// The last end of any host event, per (pid, tid).
    thread_ends: HashMap<(u32, u64), u64>,
    host_pids: HashSet<u32>,
    api_pids: Vec<u32>,
    process_names: HashMap<u32, String>,
    thread_names: HashMap<(u32, u64), String>,
    gpus: Vec<String>,
    base_time_ns: Option<u64>,
    /// An error writing the output, raised from inside the parse.
    failed: Option<anyhow::Error>,
}

/// Whole nanoseconds from microseconds, rounded: Kineto writes sub-microsecond fractions. An
/// event ends at `ns(ts + dur)`, so an operation that starts where the previous one ended leaves
/// no gap, whatever the rounding.
/// The latest time, in µs from the trace's origin, a row may have: the store's
/// [`MAX_TIME_NS`](crate::store::MAX_TIME_NS) (Kineto's µs since the Unix epoch stay below it
/// until the next century).
const MAX_TIME_US: f64 = crate::store::MAX_TIME_NS as f64 / 1000.0;

fn ns(us: f64) -> u64 {
    (us * 1000.0).round() as u64
}

/// N in `ProfilerStep#N`.
fn step_number(name: &str) -> Option<u64> {
    name.strip_prefix("ProfilerStep#")?.parse().ok()
}

/// The direction and host memory of a Kineto copy name, `Memcpy HtoD (Pageable -> Device)`.
fn copy_of(name: &str) -> (Option<String>, Option<bool>) {
    let kind = name.strip_prefix("Memcpy ").and_then(|rest| rest.split([' ', '(']).next()).filter(|k| !k.is_empty());
    let pinned = if name.contains("Pinned") {
        Some(true)
    } else if name.contains("Pageable") {
        Some(false)
    } else {
        None
    };
    (kind.map(str::to_string), pinned)
}

impl Importer {
    fn new(writer: TraceWriter) -> Self {
        Importer {
            writer,
            strings: Strings::default(),
            categories: Vec::new(),
            summary: ImportSummary::default(),
            gpu_ops: Vec::new(),
            api_calls: Vec::new(),
            marks: Vec::new(),
            spans: Vec::new(),
            steps: Vec::new(),
            launches: Vec::new(),
            launched: Vec::new(),
            thread_ends: HashMap::new(),
            host_pids: HashSet::new(),
            api_pids: Vec::new(),
            process_names: HashMap::new(),
            thread_names: HashMap::new(),
            gpus: Vec::new(),
            base_time_ns: None,
            failed: None,
        }
    }

    fn run(mut self, input: &Path, reader: impl std::io::Read) -> Result<ImportSummary> {
        let name = || format!("kineto trace {}", input.display());
        let mut de = serde_json::Deserializer::from_reader(reader);
        let parsed = de.deserialize_any(TopVisitor(&mut self)).and_then(|events| de.end().map(|_| events));
        let events = match (parsed, self.failed.take()) {
            (Ok(events), _) => events,
            (Err(_), Some(failed)) => return Err(failed),
            (Err(e), None) => {
                let what = match e.classify() {
                    serde_json::error::Category::Io => format!("{}: cannot read", name()),
                    serde_json::error::Category::Data => name(),
                    _ => format!("{}: not valid JSON (expected a torch.profiler Chrome trace)", name()),
                };
                return Err(anyhow::Error::new(e).context(what));
            }
        };
        if !events {
            bail!("{}: no traceEvents array (expected torch.profiler's export_chrome_trace output)", name());
        }
        self.finish()
    }

    fn skip(&mut self, reason: &str) {
        match self.summary.skipped.get_mut(reason) {
            Some(n) => *n += 1,
            None => {
                self.summary.skipped.insert(reason.to_string(), 1);
            }
        }
    }

    fn ignore(&mut self, kind: &str) {
        match self.summary.ignored.get_mut(kind) {
            Some(n) => *n += 1,
            None => {
                self.summary.ignored.insert(kind.to_string(), 1);
            }
        }
    }

    fn category(&mut self, cat: u32) -> Category {
        let i = cat as usize;
        if i >= self.categories.len() {
            self.categories.resize(i + 1, None);
        }
        *self.categories[i].get_or_insert_with(|| Category::of(self.strings.get(cat)))
    }

    fn event(&mut self, ev: Event) -> Result<()> {
        self.summary.events += 1;
        match ev.phase {
            Phase::Complete => self.complete(ev),
            Phase::Metadata => self.metadata(ev),
            Phase::Instant => self.instant(ev),
            Phase::Flow => self.ignore("flow events"),
            Phase::Other => self.ignore("events of other phases"),
            Phase::Missing => self.skip("events without ph"),
        }
        if self.gpu_ops.len() + self.api_calls.len() + self.marks.len() >= BATCH_ROWS && self.summary.host_pid.is_some() {
            self.flush()?;
        }
        Ok(())
    }

    fn note_host(&mut self, pid: u32, tid: u64, end_ns: u64) {
        if self.summary.host_pid.is_none() {
            self.summary.host_pid = Some(pid);
        }
        self.host_pids.insert(pid);
        let end = self.thread_ends.entry((pid, tid)).or_insert(0);
        *end = (*end).max(end_ns);
    }

    fn complete(&mut self, ev: Event) {
        let Some(cat) = ev.cat else {
            self.skip("X events without cat");
            return;
        };
        let category = self.category(cat);
        if category == Category::Other {
            let kind = format!("X {}", self.strings.get(cat));
            return self.ignore(&kind);
        }
        let Some(time) = self.timing(&ev) else { return };
        match category {
            Category::Api => self.api_call(ev, time),
            Category::HostRange => self.host_range(ev, cat, time),
            _ => self.gpu_op(category, ev, time),
        }
    }

    /// An X event's name, start and end, or `None` (counted as skipped) when it lacks one.
    fn timing(&mut self, ev: &Event) -> Option<(u32, u64, u64)> {
        let (Some(ts), Some(dur)) = (ev.ts, ev.dur) else {
            self.skip(if ev.ts.is_none() { "X events without ts" } else { "X events without dur" });
            return None;
        };
        if ts < 0.0 || dur < 0.0 {
            self.skip("X events with a negative ts or dur");
            return None;
        }
        if ts + dur > MAX_TIME_US {
            self.skip("X events ending beyond 2^62 ns");
            return None;
        }
        let Some(name) = ev.name else {
            self.skip("X events without name");
            return None;
        };
        Some((name, ns(ts), ns(ts + dur)))
    }

    fn pid_tid(ev: &Event) -> (u32, u64) {
        (ev.pid.and_then(|p| u32::try_from(p).ok()).unwrap_or(0), ev.tid.unwrap_or(0))
    }

    /// A kernel, copy, memset or synchronisation.
    fn gpu_op(&mut self, category: Category, ev: Event, (name, start_ns, end_ns): (u32, u64, u64)) {
        let (pid, _) = Self::pid_tid(&ev);
        let args = ev.args;
        let mut op = GpuOpRow {
            start_ns,
            end_ns,
            device: args.device.unwrap_or(pid),
            stream: args.stream.unwrap_or(ev.tid),
            correlation: args.correlation,
            bytes: args.bytes,
            ..GpuOpRow::default()
        };
        let text = self.strings.get(name);
        match category {
            Category::Kernel => {
                op.name = text.to_string();
                op.grid = args.grid;
                op.block = args.block;
                op.registers = args.registers;
                op.shared_mem_bytes = args.shared_memory;
                self.summary.kernels += 1;
                if op.correlation.is_none() {
                    self.summary.kernels_without_correlation += 1;
                }
            }
            Category::Memcpy => {
                let (kind, pinned) = copy_of(text);
                op.kind = GpuOpKind::Memcpy;
                op.name = format!("memcpy {}", kind.as_deref().unwrap_or("unknown"));
                op.copy_kind = kind;
                op.pinned = pinned;
                self.summary.memcpys += 1;
            }
            Category::Memset => {
                op.kind = GpuOpKind::Memset;
                op.name = "memset".into();
                self.summary.memsets += 1;
            }
            _ => {
                op.kind = GpuOpKind::Sync;
                op.name = text.to_string();
                self.summary.syncs += 1;
            }
        }
        if let (Some(correlation), true) = (op.correlation, op.kind != GpuOpKind::Sync) {
            self.launched.push((correlation, start_ns, end_ns));
        }
        self.gpu_ops.push(op);
    }

    fn api_call(&mut self, ev: Event, (name, start_ns, end_ns): (u32, u64, u64)) {
        let (pid, tid) = Self::pid_tid(&ev);
        self.note_host(pid, tid, end_ns);
        if let Some(correlation) = ev.args.correlation {
            self.launches.push((pid, correlation, start_ns));
            if !self.api_pids.contains(&pid) {
                self.api_pids.push(pid);
            }
        }
        self.api_calls.push(ApiCallRow {
            start_ns,
            end_ns,
            pid,
            tid,
            name: self.strings.get(name).to_string(),
            correlation: ev.args.correlation,
            result: None,
        });
        self.summary.api_calls += 1;
    }

    fn host_range(&mut self, ev: Event, cat: u32, (name, start_ns, end_ns): (u32, u64, u64)) {
        let (pid, tid) = Self::pid_tid(&ev);
        self.note_host(pid, tid, end_ns);
        let step_name = self.strings.get(name);
        match step_number(step_name) {
            Some(number) if self.steps.iter().any(|s| s.number == number) => {
                self.skip("ProfilerStep events repeating a step number (kept as ranges, not iterations)")
            }
            Some(number) => self.steps.push(Step { number, span: self.spans.len() }),
            None if step_name.starts_with("ProfilerStep#") => {
                self.skip("ProfilerStep events whose number does not parse (kept as ranges, not iterations)")
            }
            None => {}
        }
        let work = match (&ev.args.input_dims, &ev.args.input_types) {
            (Some(dims), Some(types)) => op_work(self.strings.get(name), dims, types, ev.args.flops),
            _ => None,
        };
        self.spans.push(PendingSpan { start_ns, end_ns, pid, tid, name, cat, work });
    }

    fn metadata(&mut self, ev: Event) {
        let (Some(name), Some(pid), Some(value)) = (ev.name, ev.pid.and_then(|p| u32::try_from(p).ok()), ev.args.name) else {
            self.ignore("metadata events");
            return;
        };
        match self.strings.get(name) {
            "process_name" => {
                self.process_names.insert(pid, value);
            }
            "thread_name" => {
                self.thread_names.insert((pid, ev.tid.unwrap_or(0)), value);
            }
            _ => self.ignore("metadata events"),
        }
    }

    fn instant(&mut self, ev: Event) {
        let (Some(ts), Some(name)) = (ev.ts, ev.name) else {
            self.skip("instant events without ts or name");
            return;
        };
        if ts < 0.0 {
            self.skip("instant events with a negative ts");
            return;
        }
        if ts > MAX_TIME_US {
            self.skip("instant events beyond 2^62 ns");
            return;
        }
        let category = ev.cat.map_or("", |c| self.strings.get(c)).to_string();
        self.marks.push(MarkRow {
            ts_ns: ns(ts),
            tid: ev.tid.unwrap_or(0),
            name: self.strings.get(name).to_string(),
            category,
            iteration: None,
            args: None,
        });
        self.summary.marks += 1;
    }

    /// Writes the pending GPU operations, API calls and marks, GPU operations under the host pid.
    fn flush(&mut self) -> Result<()> {
        let pid = self.summary.host_pid.unwrap_or(0);
        for op in &mut self.gpu_ops {
            op.pid = pid;
        }
        let batch = Batch { marks: &self.marks, ..Batch::default() };
        self.writer.write(&batch, &GpuBatch { gpu_ops: &self.gpu_ops, api_calls: &self.api_calls, ..GpuBatch::default() })?;
        self.gpu_ops.clear();
        self.api_calls.clear();
        self.marks.clear();
        Ok(())
    }

    /// Steps become iterations; steps without a duration are extended to the next step of their
    /// thread, or to the thread's last event.
    fn iterations(&mut self) -> Vec<IterationRow> {
        let spans = &mut self.spans;
        self.steps.sort_by_key(|s| (spans[s.span].pid, spans[s.span].tid, spans[s.span].start_ns));
        for i in 0..self.steps.len() {
            let span = &spans[self.steps[i].span];
            if span.end_ns > span.start_ns {
                continue;
            }
            let thread = (span.pid, span.tid);
            let next = self.steps.get(i + 1).map(|s| &spans[s.span]).filter(|s| (s.pid, s.tid) == thread).map(|s| s.start_ns);
            let end = next.or_else(|| self.thread_ends.get(&thread).copied()).unwrap_or(span.end_ns);
            if end > span.start_ns {
                spans[self.steps[i].span].end_ns = end;
                self.summary.steps_extended += 1;
            }
        }
        let device = self.device_spans();
        let spans = &self.spans;
        let mut rows: BTreeMap<u64, IterationRow> = BTreeMap::new();
        for step in &self.steps {
            let span = &spans[step.span];
            let row = IterationRow {
                iter: step.number,
                start_ns: span.start_ns,
                end_ns: span.end_ns,
                ctx_reqs: 0,
                gen_reqs: 0,
                ctx_tokens: 0,
                gen_tokens: 0,
                kv_used_blocks: 0,
                kv_total_blocks: 0,
                host_ms: (span.end_ns - span.start_ns) as f64 / 1e6,
                device_ms: device(span.start_ns, span.end_ns).map(|ns| ns as f64 / 1e6),
                // What the step moved and computed is not in a Kineto trace.
                queued_reqs: None,
                weight_bytes: None,
                kv_bytes_read: None,
                flops: None,
                fp8_flops: None,
                attention_flops: None,
            };
            let kept = rows.entry(step.number).or_insert_with(|| row.clone());
            if row.end_ns - row.start_ns > kept.end_ns - kept.start_ns {
                *kept = row;
            }
        }
        rows.into_values().collect()
    }

    /// A function giving, for a time window, the first start to last end of the GPU work (of the
    /// host process) whose launch call started in it, or `None` when there is none.
    fn device_spans(&mut self) -> impl Fn(u64, u64) -> Option<u64> {
        let host = self.summary.host_pid.unwrap_or(0);
        let mut launches: Vec<(u64, u64)> =
            std::mem::take(&mut self.launches).into_iter().filter(|l| l.0 == host).map(|(_, c, start)| (c, start)).collect();
        launches.sort_unstable();
        self.summary.correlation_collisions = launches.windows(2).filter(|w| w[0].0 == w[1].0).count() as u64;
        let mut ops: Vec<(u64, u64, u64)> = std::mem::take(&mut self.launched)
            .into_iter()
            .filter_map(|(c, start, end)| {
                let i = launches.partition_point(|l| l.0 < c);
                launches.get(i).filter(|l| l.0 == c).map(|l| (l.1, start, end))
            })
            .collect();
        ops.sort_unstable();
        move |start, end| {
            let first = ops.partition_point(|o| o.0 < start);
            let inside = ops[first..].iter().take_while(|o| o.0 < end);
            inside
                .fold(None, |span: Option<(u64, u64)>, o| Some(span.map_or((o.1, o.2), |(a, b)| (a.min(o.1), b.max(o.2)))))
                .map(|(a, b)| b - a)
        }
    }

    /// The spans with their depth on their thread, in chunks.
    fn write_spans(&mut self) -> Result<()> {
        let spans = &mut self.spans;
        spans.sort_unstable_by(|a, b| {
            (a.pid, a.tid, a.start_ns, std::cmp::Reverse(a.end_ns)).cmp(&(b.pid, b.tid, b.start_ns, std::cmp::Reverse(b.end_ns)))
        });
        let mut open: Vec<u64> = Vec::new();
        let mut thread = None;
        let mut chunk = Vec::with_capacity(BATCH_ROWS.min(spans.len()));
        for span in spans.iter() {
            if thread != Some((span.pid, span.tid)) {
                thread = Some((span.pid, span.tid));
                open.clear();
            }
            while open.last().is_some_and(|&end| end <= span.start_ns) {
                open.pop();
            }
            chunk.push(SpanRow {
                start_ns: span.start_ns,
                end_ns: span.end_ns,
                tid: span.tid,
                name: self.strings.get(span.name).to_string(),
                category: self.strings.get(span.cat).to_string(),
                depth: open.len() as u32,
                iteration: None,
                args: span.work.map(|w| {
                    let fp32 = if w.fp32 { ",\"fp32\":true" } else { "" };
                    format!("{{\"flops\":{},\"bytes\":{}{fp32}}}", w.flops, w.bytes)
                }),
            });
            open.push(span.end_ns);
            if chunk.len() == BATCH_ROWS {
                self.writer.append(&Batch { spans: &chunk, ..Batch::default() })?;
                chunk.clear();
            }
        }
        self.writer.append(&Batch { spans: &chunk, ..Batch::default() })?;
        self.summary.spans = spans.len() as u64;
        Ok(())
    }

    fn finish(mut self) -> Result<ImportSummary> {
        self.flush()?;
        let iterations = self.iterations();
        self.summary.iterations = iterations.len() as u64;
        self.write_spans()?;
        let mut processes: Vec<ProcessRow> =
            self.host_pids.iter().map(|&pid| ProcessRow { pid, name: self.process_names.remove(&pid).unwrap_or_default() }).collect();
        processes.retain(|p| !p.name.is_empty());
        let threads: Vec<ThreadRow> = self
            .thread_names
            .drain()
            .filter(|((pid, _), _)| self.host_pids.contains(pid))
            .map(|((pid, tid), name)| ThreadRow { pid, tid, name })
            .collect();
        self.writer.write(
            &Batch { iterations: &iterations, ..Batch::default() },
            &GpuBatch { processes: &processes, threads: &threads, ..GpuBatch::default() },
        )?;
        self.summary.other_host_pids = self.api_pids.iter().copied().filter(|&p| Some(p) != self.summary.host_pid).collect();
        if self.summary.correlation_collisions > 0 {
            self.writer.set_meta("kineto_correlation_collisions", &self.summary.correlation_collisions.to_string())?;
        }
        if !self.gpus.is_empty() {
            self.writer.set_meta("gpu", &self.gpus.join(", "))?;
        }
        if let Some(base) = self.base_time_ns {
            self.writer.set_meta("kineto_base_time_ns", &base.to_string())?;
        }
        if let Some(pid) = self.summary.host_pid {
            self.writer.set_meta("pid", &pid.to_string())?;
        }
        self.writer.set_meta(CLOCK_KEY, KINETO_CLOCK)?;
        let skipped = self.summary.skipped_total();
        let skipped_text = if skipped == 0 { "0".to_string() } else { format!("{skipped}: {}", describe_counts(&self.summary.skipped)) };
        self.writer.set_meta("kineto_skipped", &skipped_text)?;
        self.writer.set_meta("kineto_ignored", &self.summary.ignored_total().to_string())?;
        self.writer.finish()?;
        Ok(self.summary)
    }
}

#[cfg(test)]
mod op_work_tests {
    use super::*;

    fn shapes(dims: &[&[u64]]) -> Vec<Option<Vec<u64>>> {
        dims.iter().map(|d| Some(d.to_vec())).collect()
    }

    fn types(n: usize, ty: &str) -> Vec<String> {
        vec![ty.to_string(); n]
    }

    #[test]
    fn matrix_products_count_flops_and_their_output() {
        // [1, 8192] @ [8192, 32768] in bf16: the weight dominates the bytes.
        let w = op_work("aten::mm", &shapes(&[&[1, 8192], &[8192, 32768]]), &types(2, "c10::BFloat16"), None).unwrap();
        assert_eq!(w.flops, 2.0 * 8192.0 * 32768.0);
        assert_eq!(w.bytes, 2 * (8192 + 8192 * 32768 + 32768));
        assert!(!w.fp32, "bf16 products run on the tensor pipes");
        let addmm = op_work("aten::addmm", &shapes(&[&[64], &[16, 32], &[32, 64]]), &types(3, "float"), None).unwrap();
        assert_eq!((addmm.flops, addmm.bytes, addmm.fp32), (2.0 * 16.0 * 32.0 * 64.0, 4 * (64 + 16 * 32 + 32 * 64 + 16 * 64), true));
        let bmm = op_work("aten::bmm", &shapes(&[&[4, 2, 3], &[4, 3, 5]]), &types(2, "c10::Half"), Some(7.0)).unwrap();
        assert_eq!((bmm.flops, bmm.bytes), (7.0, 2 * (24 + 60 + 40)), "the profiler's flops win");
    }

    #[test]
    fn elementwise_ops_read_their_inputs_and_write_one_output() {
        let n = 1u64 << 29;
        let types4 = vec!["c10::BFloat16".to_string(), "c10::BFloat16".into(), "Scalar".into(), "c10::BFloat16".into()];
        let out = op_work("aten::add", &[Some(vec![n]), Some(vec![n]), Some(vec![]), Some(vec![n])], &types4, None).unwrap();
        assert_eq!((out.flops, out.bytes), (0.0, 3 * 2 * n), "an out= tensor is the output");
        let functional = op_work("aten::mul", &shapes(&[&[8, 8], &[8, 8]]), &types(2, "float"), None).unwrap();
        assert_eq!((functional.bytes, functional.fp32), (3 * 4 * 64, false), "no FLOPs counted, no FP32 ceiling");
        assert_eq!(op_work("aten::empty", &[Some(vec![])], &types(1, "float"), None), None, "no tensor input, no work");
        assert_eq!(op_work("aten::mm", &shapes(&[&[2, 2], &[2, 2]]), &types(2, "unknown"), None), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::correlate::LaunchIndex;
    use crate::model::TraceData;
    use crate::store::read_trace;
    use std::path::PathBuf;

    struct Files {
        input: PathBuf,
        output: PathBuf,
    }

    impl Files {
        fn new(name: &str, json: &str) -> Files {
            let dir = std::env::temp_dir();
            let input = dir.join(format!("lumen-kineto-{}-{name}.json", std::process::id()));
            let output = dir.join(format!("lumen-kineto-{}-{name}.lumen", std::process::id()));
            std::fs::write(&input, json).unwrap();
            Files { input, output }
        }

        fn import(&self) -> Result<ImportSummary, String> {
            import_kineto(&self.input, &self.output).map_err(|e| format!("{e:#}"))
        }

        fn imported(&self) -> (ImportSummary, TraceData) {
            let summary = self.import().unwrap();
            (summary, read_trace(&self.output).unwrap())
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.input);
            let _ = std::fs::remove_file(&self.output);
        }
    }

    /// A small trace with one event of every kind torch.profiler writes, in the order it writes
    /// them: host events, then GPU activity (the kernel before its launch call's correlation is
    /// seen again), flows, and the base time after the events.
    const EVERY_KIND: &str = r#"{
      "schemaVersion": 1,
      "deviceProperties": [{"id": 0, "name": "NVIDIA H100 80GB HBM3", "totalGlobalMem": 85029158912, "computeMajor": 9}],
      "traceEvents": [
        {"ph": "M", "name": "process_name", "pid": 100, "tid": 0, "args": {"name": "python3 serve.py"}},
        {"ph": "M", "name": "thread_name", "pid": 100, "tid": 101, "args": {"name": "thread 101 (python3)"}},
        {"ph": "M", "name": "process_name", "pid": 0, "tid": 0, "args": {"name": "GPU 0"}},
        {"ph": "M", "name": "thread_name", "pid": 0, "tid": 7, "args": {"name": "stream 7"}},
        {"ph": "M", "name": "process_sort_index", "pid": 100, "tid": 0, "args": {"sort_index": 100}},
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#3", "pid": 100, "tid": 101, "ts": 1000.0, "dur": 100.0,
         "args": {"External id": 1, "Record function id": 0}},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "pid": 100, "tid": 101, "ts": 1010.0, "dur": 30.0,
         "args": {"External id": 2, "Input Dims": [[16, 4096], [4096, 4096]], "Input type": ["c10::BFloat16", "c10::BFloat16"]}},
        {"ph": "X", "cat": "python_function", "name": "torch/nn/modules/linear.py(125): forward", "pid": 100, "tid": 101,
         "ts": 1005.0, "dur": 40.0, "args": {"Python parent id": 1, "Python id": 2}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 100, "tid": 101, "ts": 1020.0, "dur": 5.0,
         "args": {"External id": 2, "cbid": 211, "correlation": 7}},
        {"ph": "X", "cat": "cuda_driver", "name": "cuLaunchKernel", "pid": 100, "tid": 101, "ts": 1030.0, "dur": 4.0,
         "args": {"External id": 2, "cbid": 307, "correlation": 8}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaMemcpyAsync", "pid": 100, "tid": 101, "ts": 1050.0, "dur": 6.0,
         "args": {"correlation": 9}},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaDeviceSynchronize", "pid": 100, "tid": 101, "ts": 1060.0, "dur": 30.0,
         "args": {"correlation": 10}},
        {"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "[memory]", "pid": 100, "tid": 101, "ts": 1015.5,
         "args": {"Total Reserved": 2097152, "Bytes": 512}},
        {"ph": "X", "cat": "kernel", "name": "sm90_xmma_gemm_bf16bf16_bf16f32", "pid": 0, "tid": 7, "ts": 1030.0, "dur": 20.0,
         "args": {"External id": 2, "queued": 0, "device": 0, "context": 1, "stream": 7, "correlation": 7,
                  "registers per thread": 168, "shared memory": 73728, "blocks per SM": 0.5, "warps per SM": 4.0,
                  "grid": [66, 2, 1], "block": [384, 1, 1], "est. achieved occupancy %": 0}},
        {"ph": "X", "cat": "kernel", "name": "void at::native::vectorized_elementwise_kernel<4>()", "pid": 0, "tid": 7,
         "ts": 1050.0, "dur": 2.0, "args": {"device": 0, "stream": 7, "correlation": 8, "grid": [1, 1, 1], "block": [128, 1, 1]}},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy HtoD (Pageable -> Device)", "pid": 0, "tid": 7, "ts": 1057.0, "dur": 3.0,
         "args": {"device": 0, "context": 1, "stream": 7, "correlation": 9, "bytes": 4096, "memory bandwidth (GB/s)": 1.3}},
        {"ph": "X", "cat": "cuda_sync", "name": "Context Sync", "pid": 0, "tid": 7, "ts": 1060.0, "dur": 29.5,
         "args": {"device": 0, "context": 1, "stream": -1, "correlation": 10}},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoH (Device -> Pinned)", "pid": 0, "tid": 7, "ts": 1061.0, "dur": 1.0,
         "args": {"device": 0, "stream": 7, "correlation": 11, "bytes": 64}},
        {"ph": "X", "cat": "gpu_memset", "name": "Memset (Device)", "pid": 0, "tid": 7, "ts": 1063.0, "dur": 1.0,
         "args": {"device": 0, "stream": 7, "correlation": 12, "bytes": 256}},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "ProfilerStep#3", "pid": 0, "tid": 7, "ts": 1030.0, "dur": 35.0,
         "args": {"External id": 1}},
        {"ph": "X", "cat": "gpu_user_annotation", "name": "forward", "pid": 0, "tid": 7, "ts": 1030.0, "dur": 20.0},
        {"ph": "s", "id": 7, "pid": 100, "tid": 101, "ts": 1020.0, "cat": "ac2g", "name": "ac2g"},
        {"ph": "f", "id": 7, "pid": 0, "tid": 7, "ts": 1030.0, "cat": "ac2g", "name": "ac2g", "bp": "e"},
        {"ph": "X", "cat": "Trace", "name": "PyTorch Profiler (0)", "pid": "Spans", "tid": "PyTorch Profiler", "ts": 990.0, "dur": 200.0},
        {"ph": "X", "cat": "overhead", "name": "Activity Buffer Request", "pid": 0, "tid": 0, "ts": 995.0, "dur": 3.0},
        {"ph": "X", "cat": "cuda_profiler_range", "name": "CUPTI range", "pid": 0, "tid": 0, "ts": 995.0, "dur": 3.0}
      ],
      "traceName": "rank0.pt.trace.json",
      "displayTimeUnit": "ms",
      "baseTimeNanoseconds": 1700000000000000000
    }"#;

    #[test]
    fn every_kind_of_event_becomes_its_row() {
        let files = Files::new("every-kind", EVERY_KIND);
        let (s, t) = files.imported();
        assert_eq!(
            (s.events, s.kernels, s.memcpys, s.memsets, s.syncs, s.api_calls, s.spans, s.marks, s.iterations),
            (26, 2, 2, 1, 1, 4, 3, 1, 1)
        );
        assert_eq!((s.host_pid, s.skipped_total(), s.steps_extended), (Some(100), 0, 0));
        let ignored: Vec<(&str, u64)> = s.ignored.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            ignored,
            [
                ("X Trace", 1),
                ("X cuda_profiler_range", 1),
                ("X gpu_user_annotation", 2),
                ("X overhead", 1),
                ("flow events", 2),
                ("metadata events", 1)
            ]
        );

        let gemm = &t.gpu_ops[0];
        assert_eq!(
            *gemm,
            GpuOpRow {
                kind: GpuOpKind::Kernel,
                start_ns: 1_030_000,
                end_ns: 1_050_000,
                pid: 100,
                device: 0,
                stream: Some(7),
                correlation: Some(7),
                name: "sm90_xmma_gemm_bf16bf16_bf16f32".into(),
                grid: Some([66, 2, 1]),
                block: Some([384, 1, 1]),
                registers: Some(168),
                shared_mem_bytes: Some(73_728),
                ..GpuOpRow::default()
            }
        );
        let rest: Vec<_> = t.gpu_ops[2..]
            .iter()
            .map(|op| (op.kind, op.name.as_str(), op.bytes, op.copy_kind.as_deref(), op.pinned, op.correlation))
            .collect();
        assert_eq!(
            rest,
            [
                (GpuOpKind::Memcpy, "memcpy HtoD", Some(4096), Some("HtoD"), Some(false), Some(9)),
                (GpuOpKind::Sync, "Context Sync", None, None, None, Some(10)),
                (GpuOpKind::Memcpy, "memcpy DtoH", Some(64), Some("DtoH"), Some(true), Some(11)),
                (GpuOpKind::Memset, "memset", Some(256), None, None, Some(12)),
            ]
        );
        let sync = &t.gpu_ops[3];
        assert_eq!((sync.start_ns, sync.end_ns, sync.stream), (1_060_000, 1_089_500, None), "stream -1 is no stream");
        assert!(t.gpu_ops.iter().all(|op| op.pid == 100 && op.device == 0 && (op.stream == Some(7) || op.kind == GpuOpKind::Sync)));

        let calls: Vec<_> = t.api_calls.iter().map(|c| (c.name.as_str(), c.start_ns, c.end_ns, c.pid, c.tid, c.correlation)).collect();
        assert_eq!(
            calls,
            [
                ("cudaLaunchKernel", 1_020_000, 1_025_000, 100, 101, Some(7)),
                ("cuLaunchKernel", 1_030_000, 1_034_000, 100, 101, Some(8)),
                ("cudaMemcpyAsync", 1_050_000, 1_056_000, 100, 101, Some(9)),
                ("cudaDeviceSynchronize", 1_060_000, 1_090_000, 100, 101, Some(10)),
            ]
        );
        let launches = LaunchIndex::new(&t);
        let launched: Vec<Option<&str>> = t.gpu_ops.iter().map(|op| launches.launch_of(op).map(|c| c.name.as_str())).collect();
        assert_eq!(
            launched,
            [Some("cudaLaunchKernel"), Some("cuLaunchKernel"), Some("cudaMemcpyAsync"), Some("cudaDeviceSynchronize"), None, None]
        );

        let spans: Vec<(&str, &str, u64, u64, u64, u32)> =
            t.spans.iter().map(|s| (s.name.as_str(), s.category.as_str(), s.start_ns, s.end_ns, s.tid, s.depth)).collect();
        assert_eq!(
            spans,
            [
                ("ProfilerStep#3", "user_annotation", 1_000_000, 1_100_000, 101, 0),
                ("torch/nn/modules/linear.py(125): forward", "python_function", 1_005_000, 1_045_000, 101, 1),
                ("aten::mm", "cpu_op", 1_010_000, 1_040_000, 101, 2),
            ]
        );
        assert_eq!(t.iterations.len(), 1);
        let it = &t.iterations[0];
        assert_eq!((it.iter, it.start_ns, it.end_ns, it.host_ms, it.device_ms), (3, 1_000_000, 1_100_000, 0.1, Some(0.03)));
        assert_eq!(t.marks.len(), 1);
        assert_eq!(
            (t.marks[0].ts_ns, t.marks[0].tid, t.marks[0].name.as_str(), t.marks[0].category.as_str()),
            (1_015_500, 101, "[memory]", "cpu_instant_event")
        );

        assert_eq!(t.processes, [ProcessRow { pid: 100, name: "python3 serve.py".into() }], "the GPU's pseudo-process is left out");
        assert_eq!(t.threads, [ThreadRow { pid: 100, tid: 101, name: "thread 101 (python3)".into() }]);
        assert_eq!(t.meta("source"), Some("kineto import"));
        assert_eq!(t.meta("input"), Some(files.input.display().to_string().as_str()));
        assert_eq!(t.meta("gpu"), Some("NVIDIA H100 80GB HBM3"));
        assert_eq!(t.meta("kineto_base_time_ns"), Some("1700000000000000000"));
        assert_eq!((t.meta("pid"), t.meta("kineto_skipped"), t.meta("kineto_ignored")), (Some("100"), Some("0"), Some("8")));
        assert_eq!(t.meta("complete"), Some("true"));
    }

    fn events(events: &str) -> String {
        format!(r#"{{"traceEvents": [{events}]}}"#)
    }

    #[test]
    fn timestamps_become_nanoseconds_with_their_fractions() {
        let files = Files::new(
            "timestamps",
            &events(
                r#"{"ph": "X", "cat": "kernel", "name": "a", "pid": 0, "tid": 7, "ts": 1000010.123, "dur": 2.5005, "args": {"correlation": 1}},
                   {"ph": "X", "cat": "kernel", "name": "b", "pid": 0, "tid": 7, "ts": 1000012.6235, "dur": 0.3, "args": {"correlation": 2}},
                   {"ph": "X", "cat": "kernel", "name": "c", "pid": 0, "tid": 7, "ts": "1000020.5", "dur": "1.25", "args": {"correlation": "3"}},
                   {"ph": "X", "cat": "kernel", "name": "d", "pid": 0, "tid": 7, "ts": 1000030, "dur": 0, "args": {"correlation": 4}}"#,
            ),
        );
        let (_, t) = files.imported();
        let times: Vec<(&str, u64, u64, Option<u64>)> =
            t.gpu_ops.iter().map(|op| (op.name.as_str(), op.start_ns, op.end_ns, op.correlation)).collect();
        assert_eq!(
            times,
            [
                ("a", 1_000_010_123, 1_000_012_624, Some(1)),
                ("b", 1_000_012_624, 1_000_012_924, Some(2)),
                ("c", 1_000_020_500, 1_000_021_750, Some(3)),
                ("d", 1_000_030_000, 1_000_030_000, Some(4)),
            ],
            "sub-microsecond fractions are kept, and b starts where a ends"
        );
    }

    #[test]
    fn steps_without_a_duration_last_until_the_next_one() {
        let mut json = String::new();
        for step in 0..3u64 {
            let t = 1000 + step * 100;
            json += &format!(
                r#"{{"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#{step}", "pid": 5, "tid": 6, "ts": {t}, "dur": 0}},
                   {{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 5, "tid": 6, "ts": {}, "dur": 4, "args": {{"correlation": {}}}}},"#,
                t + 10,
                step + 1
            );
        }
        // Step 0's kernels run while step 1 is on the host; step 1 launches one of its own; step 2
        // launches nothing that reached the GPU.
        json += r#"{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 1150, "dur": 30, "args": {"correlation": 1}},
                   {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 1020, "dur": 2, "args": {"correlation": 1}},
                   {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 1190, "dur": 4.5, "args": {"correlation": 2}},
                   {"ph": "X", "cat": "cpu_op", "name": "aten::add", "pid": 5, "tid": 6, "ts": 1230, "dur": 5}"#;
        let files = Files::new("steps", &events(&json));
        let (s, t) = files.imported();
        assert_eq!(s.steps_extended, 3);
        let windows: Vec<(u64, u64, u64, f64, Option<f64>)> =
            t.iterations.iter().map(|i| (i.iter, i.start_ns, i.end_ns, i.host_ms, i.device_ms)).collect();
        assert_eq!(
            windows,
            [
                (0, 1_000_000, 1_100_000, 0.1, Some(0.16)),
                (1, 1_100_000, 1_200_000, 0.1, Some(0.0045)),
                (2, 1_200_000, 1_235_000, 0.035, None)
            ],
            "the last step ends with its thread's last event; device time spans the GPU work launched in the step"
        );
        let step_spans: Vec<(u64, u64)> =
            t.spans.iter().filter(|s| s.name.starts_with("ProfilerStep#")).map(|s| (s.start_ns, s.end_ns)).collect();
        assert_eq!(step_spans, [(1_000_000, 1_100_000), (1_100_000, 1_200_000), (1_200_000, 1_235_000)]);
        assert_eq!(t.spans.iter().find(|s| s.name == "aten::add").map(|s| s.depth), Some(1), "inside the extended step 2");
    }

    #[test]
    fn spans_nest_by_time_on_each_thread() {
        let files = Files::new(
            "nesting",
            &events(
                r#"{"ph": "X", "cat": "cpu_op", "name": "inner", "pid": 1, "tid": 2, "ts": 20, "dur": 10},
                   {"ph": "X", "cat": "cpu_op", "name": "outer", "pid": 1, "tid": 2, "ts": 10, "dur": 50},
                   {"ph": "X", "cat": "cpu_op", "name": "innermost", "pid": 1, "tid": 2, "ts": 22, "dur": 2},
                   {"ph": "X", "cat": "cpu_op", "name": "sibling", "pid": 1, "tid": 2, "ts": 30, "dur": 5},
                   {"ph": "X", "cat": "cpu_op", "name": "after", "pid": 1, "tid": 2, "ts": 60, "dur": 5},
                   {"ph": "X", "cat": "cpu_op", "name": "other thread", "pid": 1, "tid": 3, "ts": 21, "dur": 5}"#,
            ),
        );
        let (_, t) = files.imported();
        let mut depths: Vec<(&str, u32)> = t.spans.iter().map(|s| (s.name.as_str(), s.depth)).collect();
        depths.sort_unstable();
        assert_eq!(depths, [("after", 0), ("inner", 1), ("innermost", 2), ("other thread", 0), ("outer", 0), ("sibling", 1)]);
    }

    #[test]
    fn gpu_work_before_any_host_event_still_gets_the_host_pid() {
        let files = Files::new(
            "gpu-first",
            &events(
                r#"{"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": "stream 7 ", "ts": 50, "dur": 1, "args": {"correlation": 1}},
                   {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 900, "tid": 901, "ts": 40, "dur": 2, "args": {"correlation": 1}},
                   {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 950, "tid": 951, "ts": 45, "dur": 2, "args": {"correlation": 2}}"#,
            ),
        );
        let (s, t) = files.imported();
        assert_eq!((t.gpu_ops[0].pid, t.gpu_ops[0].stream, t.gpu_ops[0].device), (900, Some(7), 0));
        assert_eq!(LaunchIndex::new(&t).launch_of(&t.gpu_ops[0]).map(|c| c.tid), Some(901));
        assert_eq!((s.host_pid, s.other_host_pids), (Some(900), vec![950]));
    }

    #[test]
    fn unusable_events_are_skipped_and_counted() {
        let files = Files::new(
            "skipped",
            &events(
                r#"{"ph": "X", "cat": "kernel", "name": "no ts", "pid": 0, "tid": 7, "dur": 1, "args": {"correlation": 1}},
                   {"ph": "X", "cat": "kernel", "name": "no dur", "pid": 0, "tid": 7, "ts": 5, "args": {"correlation": 2}},
                   {"ph": "X", "cat": "kernel", "name": "bad ts", "pid": 0, "tid": 7, "ts": "soon", "dur": 1},
                   {"ph": "X", "cat": "cpu_op", "name": "negative", "pid": 1, "tid": 1, "ts": -3, "dur": 1},
                   {"ph": "X", "cat": "kernel", "pid": 0, "tid": 7, "ts": 5, "dur": 1},
                   {"ph": "X", "name": "no cat", "pid": 0, "tid": 7, "ts": 5, "dur": 1},
                   {"cat": "kernel", "name": "no ph", "ts": 5, "dur": 1},
                   42, "text", [1, 2], null,
                   {"ph": "X", "cat": "kernel", "name": "kept", "pid": 0, "tid": 7, "ts": 9, "dur": 1,
                    "args": {"correlation": null, "grid": "1,1,1", "block": [128, 1], "device": "zero", "stream": 7}}"#,
            ),
        );
        let (s, t) = files.imported();
        let skipped: Vec<(&str, u64)> = s.skipped.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            skipped,
            [
                ("X events with a negative ts or dur", 1),
                ("X events without cat", 1),
                ("X events without dur", 1),
                ("X events without name", 1),
                ("X events without ts", 2),
                ("events without ph", 1),
                ("trace events that are not JSON objects", 4),
            ]
        );
        assert_eq!((s.events, s.kernels, s.kernels_without_correlation), (12, 1, 1));
        let kept = &t.gpu_ops[..];
        assert_eq!(kept.len(), 1);
        assert_eq!(
            (kept[0].name.as_str(), kept[0].correlation, kept[0].grid, kept[0].block, kept[0].device),
            ("kept", None, None, None, 0)
        );
        assert_eq!(
            t.meta("kineto_skipped"),
            Some(
                "11: 4 trace events that are not JSON objects, 2 X events without ts, 1 X events with a negative ts or dur, \
                 1 X events without cat, 1 X events without dur, 1 X events without name, 1 events without ph"
            )
        );
    }

    #[test]
    fn absurd_times_and_bad_or_repeated_step_numbers_are_counted() {
        let files = Files::new(
            "absurd",
            &events(
                r#"{"ph": "X", "cat": "kernel", "name": "far", "pid": 0, "tid": 7, "ts": 1e300, "dur": 1},
                   {"ph": "X", "cat": "kernel", "name": "long", "pid": 0, "tid": 7, "ts": 5, "dur": 1e300},
                   {"ph": "i", "cat": "cpu_instant_event", "s": "t", "name": "late", "pid": 1, "tid": 1, "ts": 1e300},
                   {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#abc", "pid": 1, "tid": 1, "ts": 10, "dur": 5},
                   {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#4", "pid": 1, "tid": 1, "ts": 20, "dur": 5},
                   {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#4", "pid": 1, "tid": 1, "ts": 30, "dur": 5},
                   {"ph": "X", "cat": "kernel", "name": "kept", "pid": 0, "tid": 7, "ts": 1.7e15, "dur": 2}"#,
            ),
        );
        let (s, t) = files.imported();
        let skipped: Vec<(&str, u64)> = s.skipped.iter().map(|(k, n)| (k.as_str(), *n)).collect();
        assert_eq!(
            skipped,
            [
                ("ProfilerStep events repeating a step number (kept as ranges, not iterations)", 1),
                ("ProfilerStep events whose number does not parse (kept as ranges, not iterations)", 1),
                ("X events ending beyond 2^62 ns", 2),
                ("instant events beyond 2^62 ns", 1),
            ]
        );
        assert_eq!(t.gpu_ops.iter().map(|g| (g.name.as_str(), g.start_ns)).collect::<Vec<_>>(), [("kept", 1_700_000_000_000_000_000)]);
        assert_eq!(t.iterations.iter().map(|i| i.iter).collect::<Vec<_>>(), [4], "one iteration 4, from the first of the two");
        assert_eq!(t.spans.iter().filter(|sp| sp.name.starts_with("ProfilerStep#")).count(), 3, "every step is still a range");
    }

    #[test]
    fn launch_calls_sharing_a_correlation_id_are_counted() {
        let files = Files::new(
            "collide",
            &events(
                r#"{"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 10, "dur": 2, "args": {"correlation": 5}},
                   {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 20, "dur": 2, "args": {"correlation": 5}},
                   {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": 1, "tid": 1, "ts": 30, "dur": 2, "args": {"correlation": 6}},
                   {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": 25, "dur": 1, "args": {"correlation": 5}}"#,
            ),
        );
        let (s, t) = files.imported();
        assert_eq!(s.correlation_collisions, 1);
        assert_eq!(t.meta("kineto_correlation_collisions"), Some("1"));
    }

    #[test]
    fn bad_files_are_errors_that_name_the_file_and_leave_no_output() {
        let cases: [(&str, &[u8], &str); 8] = [
            (
                "binary",
                b"SQLite format 3\0\x10\x00",
                "not valid JSON (expected a torch.profiler Chrome trace): expected value at line 1 column 1",
            ),
            ("empty", b"", "not valid JSON (expected a torch.profiler Chrome trace): EOF while parsing a value"),
            ("array", b"[{\"ph\": \"X\"}]", "invalid type: sequence, expected a Kineto trace: a JSON object with a traceEvents array"),
            (
                "no-events",
                b"{\"schemaVersion\": 1, \"deviceProperties\": []}",
                "no traceEvents array (expected torch.profiler's export_chrome_trace output)",
            ),
            ("events-not-array", b"{\"traceEvents\": {\"ph\": \"X\"}}", "invalid type: map, expected traceEvents to be an array of events"),
            ("truncated", b"{\"traceEvents\": [{\"ph\": \"X\", \"cat\": \"kernel\", \"name\": \"k\", \"ts\": 1", "EOF while parsing"),
            ("unterminated", b"{\"traceEvents\": [{\"ph\": \"X\"} {\"ph\": \"X\"}]}", "expected `,` or `]` at line 1 column 30"),
            ("trailing", b"{\"traceEvents\": []} x", "trailing characters at line 1 column 21"),
        ];
        for (name, bytes, want) in cases {
            let files = Files::new(name, "");
            std::fs::write(&files.input, bytes).unwrap();
            let e = files.import().unwrap_err();
            assert!(e.starts_with(&format!("kineto trace {}: ", files.input.display())) && e.contains(want), "{name}: {e}");
            assert!(!files.output.exists(), "{name}: a failed import leaves no output");
        }
        let files = Files::new("same", &events(""));
        let e = format!("{:#}", import_kineto(&files.input, &files.input).unwrap_err());
        assert!(e.contains("the output is the input"), "{e}");
        assert!(files.input.exists(), "the input survives");
        let e = format!("{:#}", import_kineto(Path::new("/nonexistent/rank0.json"), &files.output).unwrap_err());
        assert!(e.starts_with("kineto trace /nonexistent/rank0.json: cannot open: "), "{e}");
    }

    #[test]
    fn an_empty_event_list_is_an_empty_trace() {
        let files = Files::new("empty-events", &events(""));
        let (s, t) = files.imported();
        assert_eq!(s, ImportSummary::default());
        assert!(t.gpu_ops.is_empty() && t.api_calls.is_empty() && t.spans.is_empty());
        assert_eq!(t.meta("kineto_skipped"), Some("0"));
    }

    #[test]
    fn copy_names_give_direction_and_host_memory() {
        assert_eq!(copy_of("Memcpy HtoD (Pageable -> Device)"), (Some("HtoD".into()), Some(false)));
        assert_eq!(copy_of("Memcpy DtoH (Device -> Pinned)"), (Some("DtoH".into()), Some(true)));
        assert_eq!(copy_of("Memcpy DtoD (Device -> Device)"), (Some("DtoD".into()), None));
        assert_eq!(copy_of("Memcpy PtoP"), (Some("PtoP".into()), None));
        assert_eq!(copy_of("cudaMemcpy"), (None, None));
        assert_eq!((step_number("ProfilerStep#12"), step_number("ProfilerStep#"), step_number("Step#1")), (Some(12), None, None));
    }
}
