//! Perfetto protobuf export: [`to_perfetto`] turns a [`TraceData`] into a `perfetto.protos.Trace`
//! of TrackEvent packets that ui.perfetto.dev and trace_processor open, and [`decode_packets`]
//! reads such bytes back so tests can check what was written.
//!
//! The layout: one process track per process (named as [`super::processes`] says), one thread
//! track per thread under its process (also for threads that only appear in spans, marks or API
//! calls), spans as begin/end slice events and marks as instants on their thread's track, `args`
//! keys and `iteration` as debug annotations, an integer `flow` arg as a flow id (Perfetto draws an
//! arrow through every event that carries the same id), and one counter track per counter name and
//! device under the trace's own process. CUDA API calls are slices on their thread's track; GPU ops
//! are slices on named tracks under their process, one per [`super::GpuTrack`] (`GPU 0 · stream
//! 7`); the fields of both are debug annotations, and each (API call, GPU op) pair of
//! [`correlation_flows`] shares a flow id from [`CORRELATION_FLOW_BASE`] up.
//!
//! The protobuf is written by hand. Field numbers are those of Perfetto's
//! `protos/perfetto/trace/trace_packet.proto` and `protos/perfetto/trace/track_event/*.proto`.
//! Everything goes on one packet sequence without interning, so every packet stands alone.

use anyhow::{anyhow, bail, Context, Result};
use std::cmp::Reverse;
use std::collections::HashMap;

use serde_json::Value;

use super::{api_call_args, correlation_flows, gpu_op_args, gpu_tracks, processes, API_CATEGORY};
use crate::model::{ApiCallRow, CounterRow, GpuOpRow, MarkRow, SpanRow, TraceData};

/// Field numbers of `perfetto.protos.Trace` and `TracePacket`.
mod packet {
    pub const TRACE_PACKET: u32 = 1;
    pub const TIMESTAMP: u32 = 8;
    pub const TRUSTED_PACKET_SEQUENCE_ID: u32 = 10;
    pub const TRACK_EVENT: u32 = 11;
    pub const SEQUENCE_FLAGS: u32 = 13;
    pub const TRACK_DESCRIPTOR: u32 = 60;
}

/// Field numbers of `TrackEvent`.
mod event {
    pub const DEBUG_ANNOTATIONS: u32 = 4;
    pub const TYPE: u32 = 9;
    pub const TRACK_UUID: u32 = 11;
    pub const CATEGORIES: u32 = 22;
    pub const NAME: u32 = 23;
    pub const COUNTER_VALUE: u32 = 30;
    pub const DOUBLE_COUNTER_VALUE: u32 = 44;
    pub const FLOW_IDS: u32 = 47;
}

/// Field numbers of `TrackDescriptor`, `ProcessDescriptor` and `ThreadDescriptor`.
mod track {
    pub const UUID: u32 = 1;
    pub const NAME: u32 = 2;
    pub const PROCESS: u32 = 3;
    pub const THREAD: u32 = 4;
    pub const PARENT_UUID: u32 = 5;
    pub const COUNTER: u32 = 8;
    pub const PROCESS_PID: u32 = 1;
    pub const PROCESS_NAME: u32 = 6;
    pub const THREAD_PID: u32 = 1;
    pub const THREAD_TID: u32 = 2;
    pub const THREAD_NAME: u32 = 5;
}

/// Field numbers of `DebugAnnotation`.
mod annotation {
    pub const BOOL_VALUE: u32 = 2;
    pub const UINT_VALUE: u32 = 3;
    pub const INT_VALUE: u32 = 4;
    pub const DOUBLE_VALUE: u32 = 5;
    pub const STRING_VALUE: u32 = 6;
    pub const NAME: u32 = 10;
}

/// The `trusted_packet_sequence_id` of every packet.
pub const SEQUENCE_ID: u32 = 1;
/// `TracePacket.SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED`, set on the first packet.
pub const SEQ_INCREMENTAL_STATE_CLEARED: u32 = 1;
/// The flow from the `n`th (API call, GPU op) pair of [`correlation_flows`] has id
/// `CORRELATION_FLOW_BASE | n`, apart from the ids that `flow` args give.
pub const CORRELATION_FLOW_BASE: u64 = 1 << 63;

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

/// `TrackEvent.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventType {
    SliceBegin = 1,
    SliceEnd = 2,
    Instant = 3,
    Counter = 4,
}

impl EventType {
    fn from_wire(value: u64) -> Option<Self> {
        match value {
            1 => Some(Self::SliceBegin),
            2 => Some(Self::SliceEnd),
            3 => Some(Self::Instant),
            4 => Some(Self::Counter),
            _ => None,
        }
    }
}

/// One `DebugAnnotation`: a named value shown in the event's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Annotation {
    pub name: String,
    pub value: AnnotationValue,
}

/// The value of a [`Annotation`]; JSON arrays, objects and nulls travel as their JSON text.
#[derive(Debug, Clone, PartialEq)]
pub enum AnnotationValue {
    Bool(bool),
    Uint(u64),
    Int(i64),
    Double(f64),
    String(String),
}

impl AnnotationValue {
    fn from_json(value: Value) -> Self {
        match value {
            Value::Bool(b) => Self::Bool(b),
            Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Self::Int(i),
                (None, Some(u), _) => Self::Uint(u),
                (None, None, Some(f)) => Self::Double(f),
                (None, None, None) => Self::String(n.to_string()),
            },
            Value::String(s) => Self::String(s),
            other => Self::String(other.to_string()),
        }
    }
}

/// The Perfetto trace of `trace`, as the bytes of a `perfetto.protos.Trace`.
///
/// Spans are treated as half-open: at one timestamp a track's slice ends come first, then its
/// slice begins, then its instants. A span that outlives the span enclosing it on its thread is
/// cut at the enclosing span's end (and one that ends before it starts lasts zero time), so the
/// begin/end events always nest; API calls and GPU ops are laid out the same way, an API call inside
/// a span that starts and ends with it. Pids and tids are written as the `int32` the protos declare.
pub fn to_perfetto(trace: &TraceData) -> Vec<u8> {
    let mut next_uuid = 0u64;
    let mut new_uuid = || {
        next_uuid += 1;
        next_uuid
    };
    let mut descriptors = Vec::new();

    let main_pid = trace.pid();
    let mut process_uuids: HashMap<u32, u64> = HashMap::new();
    for (pid, name) in processes(trace) {
        let uuid = new_uuid();
        let mut process = Message::default();
        process.int32(track::PROCESS_PID, pid as i32);
        process.string(track::PROCESS_NAME, &name);
        let mut descriptor = Message::default();
        descriptor.varint(track::UUID, uuid);
        descriptor.message(track::PROCESS, process);
        descriptors.push(descriptor);
        process_uuids.insert(pid, uuid);
    }
    // `processes` lists every pid that a track below belongs to; the first is uuid 1.
    let process_uuid = |pid: u32| process_uuids.get(&pid).copied().unwrap_or(1);

    let flows = correlation_flows(trace);
    let mut call_flows: Vec<Vec<u64>> = vec![Vec::new(); trace.api_calls.len()];
    let mut op_flows: Vec<Vec<u64>> = vec![Vec::new(); trace.gpu_ops.len()];
    for (i, &(call, op)) in flows.iter().enumerate() {
        let id = CORRELATION_FLOW_BASE | i as u64;
        call_flows[call].push(id);
        op_flows[op].push(id);
    }

    let mut tracks: Vec<SliceTrack> = Vec::new();
    let mut thread_index: HashMap<u64, usize> = HashMap::new();
    let known = trace.threads.iter().map(|t| (t.tid, t.pid, Some(t.name.as_str())));
    let unknown = trace.spans.iter().map(|s| s.tid).chain(trace.marks.iter().map(|m| m.tid)).map(|tid| (tid, main_pid, None));
    let callers = trace.api_calls.iter().map(|a| (a.tid, a.pid, None));
    for (tid, pid, name) in known.chain(unknown).chain(callers) {
        thread_index.entry(tid).or_insert_with(|| {
            let uuid = new_uuid();
            let mut thread = Message::default();
            thread.int32(track::THREAD_PID, pid as i32);
            thread.int32(track::THREAD_TID, tid as i32);
            if let Some(name) = name {
                thread.string(track::THREAD_NAME, name);
            }
            let mut descriptor = Message::default();
            descriptor.varint(track::UUID, uuid);
            descriptor.varint(track::PARENT_UUID, process_uuid(pid));
            descriptor.message(track::THREAD, thread);
            descriptors.push(descriptor);
            tracks.push(SliceTrack { uuid, slices: Vec::new(), marks: Vec::new() });
            tracks.len() - 1
        });
    }
    for span in &trace.spans {
        if let Some(&i) = thread_index.get(&span.tid) {
            tracks[i].slices.push(Slice {
                start: span.start_ns,
                end: span.end_ns,
                depth: span.depth,
                row: SliceRow::Span(span),
                flows: &[],
            });
        }
    }
    for (call, flows) in trace.api_calls.iter().zip(&call_flows) {
        if let Some(&i) = thread_index.get(&call.tid) {
            tracks[i].slices.push(Slice { start: call.start_ns, end: call.end_ns, depth: u32::MAX, row: SliceRow::Api(call), flows });
        }
    }
    for mark in &trace.marks {
        if let Some(&i) = thread_index.get(&mark.tid) {
            tracks[i].marks.push(mark);
        }
    }

    for (gpu, ops) in gpu_tracks(trace) {
        let uuid = new_uuid();
        let mut descriptor = Message::default();
        descriptor.varint(track::UUID, uuid);
        descriptor.varint(track::PARENT_UUID, process_uuid(gpu.pid));
        descriptor.string(track::NAME, &gpu.name());
        descriptors.push(descriptor);
        let slices = ops
            .into_iter()
            .map(|i| {
                let op = &trace.gpu_ops[i];
                Slice { start: op.start_ns, end: op.end_ns, depth: 0, row: SliceRow::Gpu(op), flows: &op_flows[i] }
            })
            .collect();
        tracks.push(SliceTrack { uuid, slices, marks: Vec::new() });
    }

    let mut counters: Vec<CounterTrack> = Vec::new();
    let mut counter_index: HashMap<(&str, Option<u32>), usize> = HashMap::new();
    for row in &trace.counters {
        let i = *counter_index.entry((row.name.as_str(), row.device)).or_insert_with(|| {
            let uuid = new_uuid();
            let mut descriptor = Message::default();
            descriptor.varint(track::UUID, uuid);
            descriptor.varint(track::PARENT_UUID, process_uuid(main_pid));
            descriptor.string(track::NAME, &counter_track_name(&row.name, row.device));
            descriptor.message(track::COUNTER, Message::default());
            descriptors.push(descriptor);
            counters.push(CounterTrack { uuid, samples: Vec::new() });
            counters.len() - 1
        });
        counters[i].samples.push(row);
    }

    let mut events = Vec::new();
    for track in tracks {
        track.events(&mut events);
    }
    for counter in counters {
        counter.events(&mut events);
    }
    // Stable, so each track keeps its own order among events with equal timestamps.
    events.sort_by_key(|e| e.ts);

    let start = events.first().map_or(0, |e| e.ts);
    let mut out = Message::default();
    let packets = descriptors.into_iter().map(|d| (start, packet::TRACK_DESCRIPTOR, d));
    let packets = packets.chain(events.into_iter().map(|e| (e.ts, packet::TRACK_EVENT, e.event)));
    for (i, (ts, field, body)) in packets.enumerate() {
        let mut p = Message::default();
        p.varint(packet::TIMESTAMP, ts);
        p.varint(packet::TRUSTED_PACKET_SEQUENCE_ID, u64::from(SEQUENCE_ID));
        if i == 0 {
            p.varint(packet::SEQUENCE_FLAGS, u64::from(SEQ_INCREMENTAL_STATE_CLEARED));
        }
        p.message(field, body);
        out.message(packet::TRACE_PACKET, p);
    }
    out.0
}

/// The name of the counter track for `name` on `device`.
pub fn counter_track_name(name: &str, device: Option<u32>) -> String {
    match device {
        Some(device) => format!("{name} (device {device})"),
        None => name.to_owned(),
    }
}

/// A TrackEvent and the timestamp of the packet it goes in.
struct Timed {
    ts: u64,
    event: Message,
}

/// A track of slices and instants: a thread's spans, API calls and marks, or a GPU track's ops.
struct SliceTrack<'a> {
    uuid: u64,
    slices: Vec<Slice<'a>>,
    marks: Vec<&'a MarkRow>,
}

/// A row drawn as a slice, with its nesting depth at equal times and the correlation flows it
/// starts or ends.
struct Slice<'a> {
    start: u64,
    end: u64,
    depth: u32,
    row: SliceRow<'a>,
    flows: &'a [u64],
}

enum SliceRow<'a> {
    Span(&'a SpanRow),
    Api(&'a ApiCallRow),
    Gpu(&'a GpuOpRow),
}

impl Slice<'_> {
    fn begin(&self, uuid: u64) -> Message {
        let (name, category, annotations, flows) = match self.row {
            SliceRow::Span(s) => {
                let (annotations, flow) = annotations(s.args.as_deref(), s.iteration);
                (s.name.as_str(), s.category.as_str(), annotations, flow.into_iter().collect())
            }
            SliceRow::Api(a) => (a.name.as_str(), API_CATEGORY, json_annotations(api_call_args(a)), self.flows.to_vec()),
            SliceRow::Gpu(g) => (g.name.as_str(), g.kind.as_str(), json_annotations(gpu_op_args(g)), self.flows.to_vec()),
        };
        named_event(uuid, EventType::SliceBegin, name, category, annotations, &flows)
    }
}

impl SliceTrack<'_> {
    /// Appends this track's events to `out` in an order that nests and never goes back in time.
    fn events(mut self, out: &mut Vec<Timed>) {
        self.slices.sort_by_key(|s| (s.start, Reverse(s.end), s.depth));
        self.marks.sort_by_key(|m| m.ts_ns);
        let slices = self.slices.iter().map(|s| (s.start, Some(s), None));
        let mut items: Vec<(u64, Option<&Slice>, Option<&MarkRow>)> =
            slices.chain(self.marks.iter().map(|&m| (m.ts_ns, None, Some(m)))).collect();
        // Stable: slices keep their nesting order, and at one timestamp begins come before instants.
        items.sort_by_key(|&(ts, slice, _)| (ts, slice.is_none()));

        // The (possibly cut) end times of the open slices, innermost last; never increasing.
        let mut open: Vec<u64> = Vec::new();
        for (ts, slice, mark) in items {
            while let Some(end) = open.pop_if(|end| *end <= ts) {
                out.push(Timed { ts: end, event: track_event(self.uuid, EventType::SliceEnd) });
            }
            if let Some(slice) = slice {
                let end = slice.end.max(slice.start);
                open.push(open.last().map_or(end, |&outer| end.min(outer)));
                out.push(Timed { ts, event: slice.begin(self.uuid) });
            }
            if let Some(mark) = mark {
                let (annotations, flow) = annotations(mark.args.as_deref(), mark.iteration);
                let flows: Vec<u64> = flow.into_iter().collect();
                let event = named_event(self.uuid, EventType::Instant, &mark.name, &mark.category, annotations, &flows);
                out.push(Timed { ts, event });
            }
        }
        while let Some(end) = open.pop() {
            out.push(Timed { ts: end, event: track_event(self.uuid, EventType::SliceEnd) });
        }
    }
}

struct CounterTrack<'a> {
    uuid: u64,
    samples: Vec<&'a CounterRow>,
}

impl CounterTrack<'_> {
    fn events(mut self, out: &mut Vec<Timed>) {
        self.samples.sort_by_key(|s| s.ts_ns);
        for sample in self.samples {
            let mut event = track_event(self.uuid, EventType::Counter);
            event.double(event::DOUBLE_COUNTER_VALUE, sample.value);
            out.push(Timed { ts: sample.ts_ns, event });
        }
    }
}

fn track_event(uuid: u64, kind: EventType) -> Message {
    let mut event = Message::default();
    event.varint(event::TYPE, kind as u64);
    event.varint(event::TRACK_UUID, uuid);
    event
}

fn named_event(uuid: u64, kind: EventType, name: &str, category: &str, annotations: Vec<Annotation>, flows: &[u64]) -> Message {
    let mut event = track_event(uuid, kind);
    event.string(event::NAME, name);
    if !category.is_empty() {
        event.string(event::CATEGORIES, category);
    }
    for a in annotations {
        let mut m = Message::default();
        m.string(annotation::NAME, &a.name);
        match a.value {
            AnnotationValue::Bool(b) => m.varint(annotation::BOOL_VALUE, u64::from(b)),
            AnnotationValue::Uint(u) => m.varint(annotation::UINT_VALUE, u),
            AnnotationValue::Int(i) => m.varint(annotation::INT_VALUE, i as u64),
            AnnotationValue::Double(d) => m.double(annotation::DOUBLE_VALUE, d),
            AnnotationValue::String(s) => m.string(annotation::STRING_VALUE, &s),
        }
        event.message(event::DEBUG_ANNOTATIONS, m);
    }
    for &flow in flows {
        event.fixed64(event::FLOW_IDS, flow);
    }
    event
}

/// The debug annotations for a row's `args` and `iteration`, and its flow id (the integer `flow`
/// arg). Args that are not a JSON object become one string annotation named "args".
fn annotations(args: Option<&str>, iteration: Option<u64>) -> (Vec<Annotation>, Option<u64>) {
    let mut out = Vec::new();
    let mut flow = None;
    if let Some(text) = args {
        match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => {
                for (name, value) in map {
                    if name == "flow" {
                        flow = value.as_u64().or_else(|| value.as_i64().map(|i| i as u64));
                    }
                    out.push(Annotation { name, value: AnnotationValue::from_json(value) });
                }
            }
            _ => out.push(Annotation { name: "args".to_owned(), value: AnnotationValue::String(text.to_owned()) }),
        }
    }
    if let Some(iteration) = iteration {
        out.push(Annotation { name: "iteration".to_owned(), value: AnnotationValue::Uint(iteration) });
    }
    (out, flow)
}

/// The annotations for the arguments of an API call or GPU op.
fn json_annotations(args: Vec<(&str, Value)>) -> Vec<Annotation> {
    args.into_iter().map(|(name, value)| Annotation { name: name.to_owned(), value: AnnotationValue::from_json(value) }).collect()
}

/// A protobuf message being written.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn key(&mut self, field: u32, wire: u64) {
        put_varint(&mut self.0, (u64::from(field) << 3) | wire);
    }

    fn varint(&mut self, field: u32, value: u64) {
        self.key(field, WIRE_VARINT);
        put_varint(&mut self.0, value);
    }

    /// An `int32` field: negative values are sign-extended to ten bytes, as protobuf does.
    fn int32(&mut self, field: u32, value: i32) {
        self.varint(field, i64::from(value) as u64);
    }

    fn fixed64(&mut self, field: u32, value: u64) {
        self.key(field, WIRE_FIXED64);
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn double(&mut self, field: u32, value: f64) {
        self.fixed64(field, value.to_bits());
    }

    fn bytes(&mut self, field: u32, data: &[u8]) {
        self.key(field, WIRE_LEN);
        put_varint(&mut self.0, data.len() as u64);
        self.0.extend_from_slice(data);
    }

    fn string(&mut self, field: u32, value: &str) {
        self.bytes(field, value.as_bytes());
    }

    fn message(&mut self, field: u32, message: Message) {
        self.bytes(field, &message.0);
    }
}

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// A decoded `TracePacket`: the fields [`to_perfetto`] writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedPacket {
    pub timestamp: Option<u64>,
    pub sequence_id: Option<u32>,
    pub sequence_flags: Option<u32>,
    pub event: Option<DecodedEvent>,
    pub track: Option<DecodedTrack>,
}

/// A decoded `TrackEvent`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedEvent {
    pub event_type: Option<EventType>,
    pub track_uuid: Option<u64>,
    pub name: Option<String>,
    pub categories: Vec<String>,
    pub annotations: Vec<Annotation>,
    pub counter_value: Option<i64>,
    pub double_counter_value: Option<f64>,
    pub flow_ids: Vec<u64>,
}

/// A decoded `TrackDescriptor`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedTrack {
    pub uuid: Option<u64>,
    pub parent_uuid: Option<u64>,
    pub name: Option<String>,
    pub process: Option<DecodedProcess>,
    pub thread: Option<DecodedThread>,
    /// Whether it has a `CounterDescriptor`, i.e. is a counter track.
    pub counter: bool,
}

/// A decoded `ProcessDescriptor`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedProcess {
    pub pid: Option<i32>,
    pub name: Option<String>,
}

/// A decoded `ThreadDescriptor`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DecodedThread {
    pub pid: Option<i32>,
    pub tid: Option<i32>,
    pub name: Option<String>,
}

/// The packets of a `perfetto.protos.Trace`, with the fields [`to_perfetto`] writes; other fields
/// are skipped. Errors name the byte offset in `bytes` where decoding failed.
pub fn decode_packets(bytes: &[u8]) -> Result<Vec<DecodedPacket>> {
    let mut packets = Vec::new();
    for field in fields(bytes, 0)? {
        if field.number == packet::TRACE_PACKET {
            packets.push(decode_packet(&field.message()?)?);
        }
    }
    Ok(packets)
}

fn decode_packet(fields: &[Field]) -> Result<DecodedPacket> {
    let mut p = DecodedPacket::default();
    for f in fields {
        match f.number {
            packet::TIMESTAMP => p.timestamp = Some(f.varint()?),
            packet::TRUSTED_PACKET_SEQUENCE_ID => p.sequence_id = Some(f.varint()? as u32),
            packet::SEQUENCE_FLAGS => p.sequence_flags = Some(f.varint()? as u32),
            packet::TRACK_EVENT => p.event = Some(decode_event(&f.message()?)?),
            packet::TRACK_DESCRIPTOR => p.track = Some(decode_track(&f.message()?)?),
            _ => {}
        }
    }
    Ok(p)
}

fn decode_event(fields: &[Field]) -> Result<DecodedEvent> {
    let mut e = DecodedEvent::default();
    for f in fields {
        match f.number {
            event::TYPE => {
                let value = f.varint()?;
                let kind =
                    EventType::from_wire(value).with_context(|| format!("unknown TrackEvent type {value} at offset {}", f.offset))?;
                e.event_type = Some(kind);
            }
            event::TRACK_UUID => e.track_uuid = Some(f.varint()?),
            event::NAME => e.name = Some(f.string()?),
            event::CATEGORIES => e.categories.push(f.string()?),
            event::DEBUG_ANNOTATIONS => e.annotations.push(decode_annotation(&f.message()?, f.offset)?),
            event::COUNTER_VALUE => e.counter_value = Some(f.varint()? as i64),
            event::DOUBLE_COUNTER_VALUE => e.double_counter_value = Some(f64::from_bits(f.fixed64()?)),
            event::FLOW_IDS => match f.value {
                Wire::Bytes { offset, data } => {
                    if data.len() % 8 != 0 {
                        bail!("packed flow_ids at offset {offset} are {} bytes, not a multiple of 8", data.len());
                    }
                    e.flow_ids.extend(data.chunks(8).map(le_u64));
                }
                _ => e.flow_ids.push(f.fixed64()?),
            },
            _ => {}
        }
    }
    Ok(e)
}

fn decode_annotation(fields: &[Field], offset: usize) -> Result<Annotation> {
    let mut name = None;
    let mut value = None;
    for f in fields {
        match f.number {
            annotation::NAME => name = Some(f.string()?),
            annotation::BOOL_VALUE => value = Some(AnnotationValue::Bool(f.varint()? != 0)),
            annotation::UINT_VALUE => value = Some(AnnotationValue::Uint(f.varint()?)),
            annotation::INT_VALUE => value = Some(AnnotationValue::Int(f.varint()? as i64)),
            annotation::DOUBLE_VALUE => value = Some(AnnotationValue::Double(f64::from_bits(f.fixed64()?))),
            annotation::STRING_VALUE => value = Some(AnnotationValue::String(f.string()?)),
            _ => {}
        }
    }
    let name = name.with_context(|| format!("debug annotation at offset {offset} has no name"))?;
    let value = value.with_context(|| format!("debug annotation {name:?} at offset {offset} has no bool, int, double or string value"))?;
    Ok(Annotation { name, value })
}

fn decode_track(fields: &[Field]) -> Result<DecodedTrack> {
    let mut t = DecodedTrack::default();
    for f in fields {
        match f.number {
            track::UUID => t.uuid = Some(f.varint()?),
            track::PARENT_UUID => t.parent_uuid = Some(f.varint()?),
            track::NAME => t.name = Some(f.string()?),
            track::COUNTER => {
                f.message()?;
                t.counter = true;
            }
            track::PROCESS => {
                let mut process = DecodedProcess::default();
                for g in f.message()? {
                    match g.number {
                        track::PROCESS_PID => process.pid = Some(g.varint()? as i32),
                        track::PROCESS_NAME => process.name = Some(g.string()?),
                        _ => {}
                    }
                }
                t.process = Some(process);
            }
            track::THREAD => {
                let mut thread = DecodedThread::default();
                for g in f.message()? {
                    match g.number {
                        track::THREAD_PID => thread.pid = Some(g.varint()? as i32),
                        track::THREAD_TID => thread.tid = Some(g.varint()? as i32),
                        track::THREAD_NAME => thread.name = Some(g.string()?),
                        _ => {}
                    }
                }
                t.thread = Some(thread);
            }
            _ => {}
        }
    }
    Ok(t)
}

/// One field of a message being read; `offset` is where its key starts in the whole input.
struct Field<'a> {
    number: u32,
    offset: usize,
    value: Wire<'a>,
}

enum Wire<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32,
    /// A length-delimited payload and where it starts in the whole input.
    Bytes {
        offset: usize,
        data: &'a [u8],
    },
}

impl<'a> Field<'a> {
    fn mismatch(&self, wanted: &str) -> anyhow::Error {
        anyhow!("field {} at offset {} is not a {wanted}", self.number, self.offset)
    }

    fn varint(&self) -> Result<u64> {
        match self.value {
            Wire::Varint(v) => Ok(v),
            _ => Err(self.mismatch("varint")),
        }
    }

    fn fixed64(&self) -> Result<u64> {
        match self.value {
            Wire::Fixed64(v) => Ok(v),
            _ => Err(self.mismatch("64-bit value")),
        }
    }

    fn bytes(&self) -> Result<(usize, &'a [u8])> {
        match self.value {
            Wire::Bytes { offset, data } => Ok((offset, data)),
            _ => Err(self.mismatch("length-delimited value")),
        }
    }

    fn string(&self) -> Result<String> {
        let (offset, data) = self.bytes()?;
        String::from_utf8(data.to_vec()).with_context(|| format!("string at offset {offset} is not UTF-8"))
    }

    fn message(&self) -> Result<Vec<Field<'a>>> {
        let (offset, data) = self.bytes()?;
        fields(data, offset)
    }
}

/// The fields of the message `bytes`, which starts at offset `base` of the whole input.
fn fields(bytes: &[u8], base: usize) -> Result<Vec<Field<'_>>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let offset = base + pos;
        let key = read_varint(bytes, &mut pos, base)?;
        let number = u32::try_from(key >> 3)
            .ok()
            .filter(|&n| n != 0)
            .with_context(|| format!("bad field number {} at offset {offset}", key >> 3))?;
        let value = match key & 7 {
            WIRE_VARINT => Wire::Varint(read_varint(bytes, &mut pos, base)?),
            WIRE_FIXED64 => Wire::Fixed64(le_u64(take(bytes, &mut pos, 8, base)?)),
            WIRE_LEN => {
                let len_offset = base + pos;
                let len = read_varint(bytes, &mut pos, base)?;
                let len =
                    usize::try_from(len).ok().with_context(|| format!("length {len} at offset {len_offset} does not fit in memory"))?;
                let offset = base + pos;
                Wire::Bytes { offset, data: take(bytes, &mut pos, len, base)? }
            }
            WIRE_FIXED32 => {
                take(bytes, &mut pos, 4, base)?;
                Wire::Fixed32
            }
            wire => bail!("unsupported wire type {wire} for field {number} at offset {offset}"),
        };
        out.push(Field { number, offset, value });
    }
    Ok(out)
}

fn take<'a>(bytes: &'a [u8], pos: &mut usize, len: usize, base: usize) -> Result<&'a [u8]> {
    let start = *pos;
    let end = start
        .checked_add(len)
        .filter(|&end| end <= bytes.len())
        .with_context(|| format!("{len} bytes at offset {} run past the end of the enclosing message", base + start))?;
    *pos = end;
    Ok(&bytes[start..end])
}

fn read_varint(bytes: &[u8], pos: &mut usize, base: usize) -> Result<u64> {
    let start = base + *pos;
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *bytes.get(*pos).with_context(|| format!("truncated varint at offset {start}"))?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    bail!("varint at offset {start} is longer than 10 bytes")
}

fn le_u64(bytes: &[u8]) -> u64 {
    bytes.iter().rev().fold(0, |acc, &b| (acc << 8) | u64::from(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ThreadRow;

    const PID: u32 = 4242;

    fn span(tid: u64, start_ns: u64, end_ns: u64, depth: u32, name: &str, args: Option<&str>) -> SpanRow {
        let category = if tid == 200 { "http" } else { "engine" };
        let iteration = (tid == 100).then_some(if start_ns >= 9000 { 4 } else { 3 });
        SpanRow { start_ns, end_ns, tid, name: name.into(), category: category.into(), depth, iteration, args: args.map(str::to_owned) }
    }

    fn mark(tid: u64, ts_ns: u64, name: &str, args: Option<&str>) -> MarkRow {
        MarkRow { ts_ns, tid, name: name.into(), category: "sched".into(), iteration: None, args: args.map(str::to_owned) }
    }

    fn counter(ts_ns: u64, name: &str, device: Option<u32>, value: f64) -> CounterRow {
        CounterRow { ts_ns, name: name.into(), device, value }
    }

    /// Two named threads, a thread known only from a span and one only from a mark; nested spans
    /// with equal starts and ends, given out of order; two counter tracks; flows 7 and 9.
    fn sample() -> TraceData {
        TraceData {
            meta: vec![("command".into(), "lumen serve".into()), ("pid".into(), PID.to_string())],
            threads: vec![ThreadRow { pid: PID, tid: 100, name: "engine".into() }, ThreadRow { pid: PID, tid: 200, name: "http".into() }],
            spans: vec![
                span(100, 5000, 8000, 2, "matmul", Some(r#"{"fused": true, "shape": [1, 2], "big": 18446744073709551615}"#)),
                span(100, 3000, 8000, 1, "forward", Some(r#"{"tokens": 12, "ratio": 0.5, "phase": "decode", "flow": 7}"#)),
                span(200, 500, 9500, 0, "request", Some(r#"{"flow": 7, "id": "req-1"}"#)),
                span(100, 1000, 3000, 1, "schedule", Some(r#"{"batch": 4}"#)),
                span(100, 9000, 9500, 0, "iteration", None),
                span(300, 2000, 2500, 0, "alloc", Some("not json")),
                span(100, 3000, 5000, 2, "attention", None),
                span(100, 1000, 9000, 0, "iteration", None),
            ],
            marks: vec![
                mark(100, 4000, "kv_evict", Some(r#"{"blocks": 3}"#)),
                mark(200, 8000, "first_token", Some(r#"{"flow": 9}"#)),
                mark(100, 3000, "preempt", Some(r#"{"flow": 9}"#)),
                mark(400, 100, "orphan", None),
            ],
            counters: vec![
                counter(5000, "kv_util", None, 0.5),
                counter(2000, "gpu_util", Some(0), 87.5),
                counter(1000, "kv_util", None, 0.25),
                counter(6000, "gpu_util", Some(0), 90.0),
            ],
            ..TraceData::default()
        }
    }

    struct Decoded {
        packets: Vec<DecodedPacket>,
        tracks: HashMap<u64, DecodedTrack>,
        /// Every TrackEvent with its packet's timestamp, in packet order.
        events: Vec<(u64, DecodedEvent)>,
    }

    fn decode(trace: &TraceData) -> Decoded {
        let packets = decode_packets(&to_perfetto(trace)).expect("the export decodes");
        let mut tracks = HashMap::new();
        let mut events = Vec::new();
        for p in &packets {
            let ts = p.timestamp.expect("every packet has a timestamp");
            if let Some(t) = &p.track {
                let uuid = t.uuid.expect("every track has a uuid");
                assert!(tracks.insert(uuid, t.clone()).is_none(), "track uuid {uuid} is used twice");
            }
            if let Some(e) = &p.event {
                events.push((ts, e.clone()));
            }
        }
        Decoded { packets, tracks, events }
    }

    impl Decoded {
        fn thread_uuid(&self, tid: i32) -> u64 {
            let mut found = self.tracks.iter().filter(|(_, t)| t.thread.as_ref().is_some_and(|th| th.tid == Some(tid)));
            let (&uuid, _) = found.next().unwrap_or_else(|| panic!("no track for tid {tid}"));
            assert!(found.next().is_none(), "two tracks for tid {tid}");
            uuid
        }

        fn on_track(&self, uuid: u64) -> Vec<(u64, &DecodedEvent)> {
            self.events.iter().filter(|(_, e)| e.track_uuid == Some(uuid)).map(|(ts, e)| (*ts, e)).collect()
        }

        fn named(&self, name: &str, kind: EventType) -> &DecodedEvent {
            let mut found = self.events.iter().filter(|(_, e)| e.name.as_deref() == Some(name) && e.event_type == Some(kind));
            let (_, e) = found.next().unwrap_or_else(|| panic!("no {kind:?} event named {name}"));
            e
        }
    }

    /// A rebuilt slice: name, start, end, depth.
    type Slice = (String, u64, u64, u32);
    /// A rebuilt instant: name, timestamp, depth.
    type Instant = (String, u64, u32);

    /// A track's slices and instants, rebuilt with a stack; panics unless the events go forward in
    /// time and every end closes an open slice.
    fn replay(events: &[(u64, &DecodedEvent)]) -> (Vec<Slice>, Vec<Instant>) {
        let mut stack: Vec<(String, u64)> = Vec::new();
        let mut slices = Vec::new();
        let mut instants = Vec::new();
        let mut last = 0;
        for &(ts, e) in events {
            assert!(ts >= last, "event at {ts} after one at {last}");
            last = ts;
            let depth = stack.len() as u32;
            match e.event_type {
                Some(EventType::SliceBegin) => stack.push((e.name.clone().expect("begin has a name"), ts)),
                Some(EventType::SliceEnd) => {
                    assert_eq!(e.name, None, "end events carry no name");
                    let (name, start) = stack.pop().unwrap_or_else(|| panic!("end at {ts} with no open slice"));
                    slices.push((name, start, ts, depth - 1));
                }
                Some(EventType::Instant) => instants.push((e.name.clone().expect("instant has a name"), ts, depth)),
                other => panic!("{other:?} event on a thread track"),
            }
        }
        assert!(stack.is_empty(), "slices left open: {stack:?}");
        slices.sort();
        instants.sort();
        (slices, instants)
    }

    #[test]
    fn packets_and_track_descriptors() {
        let d = decode(&sample());
        assert_eq!(d.packets[0].sequence_flags, Some(SEQ_INCREMENTAL_STATE_CLEARED));
        assert!(d.packets[1..].iter().all(|p| p.sequence_flags.is_none()));
        assert!(d.packets.iter().all(|p| p.sequence_id == Some(SEQUENCE_ID)));
        assert!(d.packets.iter().all(|p| p.track.is_some() != p.event.is_some()), "each packet holds one descriptor or one event");
        assert!(d.tracks.keys().all(|&uuid| uuid != 0));

        let processes: Vec<_> = d.tracks.iter().filter(|(_, t)| t.process.is_some()).collect();
        assert_eq!(processes.len(), 1);
        let (&process_uuid, process) = processes[0];
        assert_eq!(process.process, Some(DecodedProcess { pid: Some(PID as i32), name: Some("lumen serve".into()) }));

        for (tid, name) in [(100, Some("engine")), (200, Some("http")), (300, None), (400, None)] {
            let t = &d.tracks[&d.thread_uuid(tid)];
            assert_eq!(t.thread, Some(DecodedThread { pid: Some(PID as i32), tid: Some(tid), name: name.map(str::to_owned) }));
            assert_eq!(t.parent_uuid, Some(process_uuid));
        }

        let mut counters: Vec<_> = d.tracks.values().filter(|t| t.counter).map(|t| (t.name.clone(), t.parent_uuid)).collect();
        counters.sort();
        assert_eq!(counters, [(Some("gpu_util (device 0)".into()), Some(process_uuid)), (Some("kv_util".into()), Some(process_uuid))]);
        assert_eq!(d.tracks.len(), 1 + 4 + 2);

        let mut last = 0;
        for (ts, e) in &d.events {
            assert!(*ts >= last, "event packets go back in time: {ts} after {last}");
            last = *ts;
            let track = &d.tracks[&e.track_uuid.expect("every event names its track")];
            assert_eq!(track.counter, e.event_type == Some(EventType::Counter), "{e:?} on {track:?}");
            assert!(track.counter || track.thread.is_some());
        }
        let first_event = d.events[0].0;
        assert_eq!(first_event, 100);
        assert!(d.packets.iter().filter(|p| p.track.is_some()).all(|p| p.timestamp == Some(first_event)));
    }

    #[test]
    fn spans_and_marks_nest_on_their_threads() {
        let trace = sample();
        let d = decode(&trace);
        for tid in [100, 200, 300, 400] {
            let (slices, instants) = replay(&d.on_track(d.thread_uuid(tid)));
            let mut want: Vec<_> =
                trace.spans.iter().filter(|s| s.tid == tid as u64).map(|s| (s.name.clone(), s.start_ns, s.end_ns, s.depth)).collect();
            want.sort();
            assert_eq!(slices, want, "slices of tid {tid}");
            let got: Vec<_> = instants.iter().map(|(name, ts, _)| (name.clone(), *ts)).collect();
            let mut want: Vec<_> = trace.marks.iter().filter(|m| m.tid == tid as u64).map(|m| (m.name.clone(), m.ts_ns)).collect();
            want.sort();
            assert_eq!(got, want, "instants of tid {tid}");
        }
        // Half-open spans: "schedule" has ended by 3000 and "forward" > "attention" have begun.
        let (_, instants) = replay(&d.on_track(d.thread_uuid(100)));
        assert_eq!(instants, [("kv_evict".into(), 4000, 3), ("preempt".into(), 3000, 3)]);
    }

    #[test]
    fn names_categories_and_annotations() {
        let d = decode(&sample());
        let forward = d.named("forward", EventType::SliceBegin);
        assert_eq!(forward.categories, ["engine"]);
        let mut annotations = forward.annotations.clone();
        annotations.sort_by(|a, b| a.name.cmp(&b.name));
        let want = [
            ("flow", AnnotationValue::Int(7)),
            ("iteration", AnnotationValue::Uint(3)),
            ("phase", AnnotationValue::String("decode".into())),
            ("ratio", AnnotationValue::Double(0.5)),
            ("tokens", AnnotationValue::Int(12)),
        ];
        let want: Vec<_> = want.into_iter().map(|(name, value)| Annotation { name: name.into(), value }).collect();
        assert_eq!(annotations, want);

        let matmul = &d.named("matmul", EventType::SliceBegin).annotations;
        assert!(matmul.contains(&Annotation { name: "fused".into(), value: AnnotationValue::Bool(true) }));
        assert!(matmul.contains(&Annotation { name: "shape".into(), value: AnnotationValue::String("[1,2]".into()) }));
        assert!(matmul.contains(&Annotation { name: "big".into(), value: AnnotationValue::Uint(u64::MAX) }));

        let alloc = d.named("alloc", EventType::SliceBegin);
        assert_eq!(alloc.annotations, [Annotation { name: "args".into(), value: AnnotationValue::String("not json".into()) }]);

        let request = d.named("request", EventType::SliceBegin);
        assert_eq!(request.categories, ["http"]);
        assert!(!request.annotations.iter().any(|a| a.name == "iteration"));

        let evict = d.named("kv_evict", EventType::Instant);
        assert_eq!(evict.categories, ["sched"]);
        assert_eq!(evict.annotations, [Annotation { name: "blocks".into(), value: AnnotationValue::Int(3) }]);
        assert!(d.named("orphan", EventType::Instant).annotations.is_empty());
    }

    #[test]
    fn counters_keep_their_samples() {
        let trace = sample();
        let d = decode(&trace);
        for (name, device) in [("kv_util", None), ("gpu_util", Some(0))] {
            let track_name = counter_track_name(name, device);
            let (&uuid, _) = d.tracks.iter().find(|(_, t)| t.name.as_deref() == Some(track_name.as_str())).expect("counter track");
            let got: Vec<_> = d.on_track(uuid).iter().map(|(ts, e)| (*ts, e.event_type, e.double_counter_value)).collect();
            let mut want: Vec<_> = trace
                .counters
                .iter()
                .filter(|c| c.name == name && c.device == device)
                .map(|c| (c.ts_ns, Some(EventType::Counter), Some(c.value)))
                .collect();
            want.sort_by_key(|w| w.0);
            assert_eq!(got, want, "samples of {track_name}");
        }
    }

    #[test]
    fn flows_reach_both_ends() {
        let d = decode(&sample());
        let with_flow = |id: u64| {
            let mut found: Vec<_> = d
                .events
                .iter()
                .filter(|(_, e)| e.flow_ids.contains(&id))
                .map(|(_, e)| (e.name.clone().unwrap_or_default(), e.event_type, e.track_uuid))
                .collect();
            found.sort();
            found
        };
        let (engine, http) = (Some(d.thread_uuid(100)), Some(d.thread_uuid(200)));
        assert_eq!(
            with_flow(7),
            [("forward".into(), Some(EventType::SliceBegin), engine), ("request".into(), Some(EventType::SliceBegin), http)]
        );
        assert_eq!(
            with_flow(9),
            [("first_token".into(), Some(EventType::Instant), http), ("preempt".into(), Some(EventType::Instant), engine)]
        );
        assert_eq!(d.events.iter().filter(|(_, e)| !e.flow_ids.is_empty()).count(), 4);
        assert!(d.events.iter().all(|(_, e)| e.flow_ids.len() <= 1));
    }

    #[test]
    fn gpu_ops_get_tracks_api_calls_their_threads_and_flows_join_them() {
        let trace = crate::export::gpu_sample();
        let d = decode(&trace);
        let process = |pid: i32| {
            let found: Vec<_> = d.tracks.iter().filter(|(_, t)| t.process.as_ref().is_some_and(|p| p.pid == Some(pid))).collect();
            assert_eq!(found.len(), 1, "one track for pid {pid}");
            (*found[0].0, found[0].1.process.clone().unwrap().name.unwrap())
        };
        let (main, main_name) = process(4242);
        let (other, other_name) = process(5000);
        assert_eq!((main, main_name.as_str(), other_name.as_str()), (1, "python serve.py", "process 5000"));
        assert_eq!(d.tracks.values().filter(|t| t.process.is_some()).count(), 2);

        let caller = &d.tracks[&d.thread_uuid(5001)];
        assert_eq!(caller.thread, Some(DecodedThread { pid: Some(5000), tid: Some(5001), name: None }));
        assert_eq!(caller.parent_uuid, Some(other));

        let mut gpu: Vec<_> = d
            .tracks
            .iter()
            .filter(|(_, t)| t.process.is_none() && t.thread.is_none() && !t.counter)
            .map(|(&uuid, t)| (t.name.clone().unwrap(), t.parent_uuid.unwrap(), uuid))
            .collect();
        gpu.sort();
        let names: Vec<_> = gpu.iter().map(|(name, parent, _)| (name.as_str(), *parent)).collect();
        assert_eq!(names, [("GPU 0", main), ("GPU 0 · stream 7", main), ("GPU 0 · stream 7 · sync", main), ("GPU 1 · stream 3", other)]);
        let slices_on = |uuid: u64| replay(&d.on_track(uuid)).0;
        let stream7 = gpu[1].2;
        let slices = slices_on(stream7);
        let want = [("gemm_bf16", 1_250, 2_250, 0), ("graph", 3_400, 7_900, 0), ("memcpy", 2_300, 3_300, 0)];
        assert_eq!(slices, want.map(|(n, s, e, depth)| (n.to_string(), s, e, depth)));

        let python: Vec<_> = slices_on(d.thread_uuid(4243)).into_iter().map(|(name, _, _, depth)| (name, depth)).collect();
        let want = [
            ("cudaGetLastError", 1),
            ("cudaGraphLaunch", 1),
            ("cudaLaunchKernel", 1),
            ("cudaMemcpyAsync", 1),
            ("cudaStreamSynchronize", 1),
            ("forward", 0),
        ];
        assert_eq!(python, want.map(|(n, depth)| (n.to_string(), depth)), "API calls nest inside the span around them");

        let gemm = d.named("gemm_bf16", EventType::SliceBegin);
        assert_eq!(gemm.categories, ["kernel"]);
        let annotation = |name: &str, value: AnnotationValue| Annotation { name: name.into(), value };
        assert_eq!(
            gemm.annotations,
            [
                annotation("device", AnnotationValue::Int(0)),
                annotation("stream", AnnotationValue::Int(7)),
                annotation("correlation", AnnotationValue::Int(1)),
                annotation("grid", AnnotationValue::String("64,2,1".into())),
                annotation("block", AnnotationValue::String("128,1,1".into())),
                annotation("registers", AnnotationValue::Int(80)),
                annotation("shared_mem_bytes", AnnotationValue::Int(32_768)),
            ]
        );
        let copy = &d.named("memcpy", EventType::SliceBegin).annotations;
        assert!(copy.contains(&annotation("copy_kind", AnnotationValue::String("HtoD".into()))));
        assert!(copy.contains(&annotation("pinned", AnnotationValue::Bool(true))));
        assert!(copy.contains(&annotation("bytes", AnnotationValue::Int(1 << 20))));
        let launch = d.named("cudaLaunchKernel", EventType::SliceBegin);
        assert_eq!(launch.categories, [API_CATEGORY]);
        assert_eq!(launch.annotations, [annotation("correlation", AnnotationValue::Int(1)), annotation("result", AnnotationValue::Int(0))]);

        let mut flows: HashMap<u64, Vec<(String, u64)>> = HashMap::new();
        for (_, e) in &d.events {
            for &id in &e.flow_ids {
                assert_eq!(e.event_type, Some(EventType::SliceBegin));
                flows.entry(id).or_default().push((e.name.clone().unwrap(), e.track_uuid.unwrap()));
            }
        }
        let mut pairs: Vec<_> = flows
            .into_iter()
            .map(|(id, mut ends)| {
                assert!(id & CORRELATION_FLOW_BASE != 0, "flow id {id:#x}");
                ends.sort();
                ends
            })
            .collect();
        pairs.sort();
        let (python, sync, other_gpu) = (d.thread_uuid(4243), gpu[2].2, gpu[3].2);
        let want = [
            [("cuLaunchKernel", d.thread_uuid(5001)), ("kernel", other_gpu)],
            [("cudaGraphLaunch", python), ("graph", stream7)],
            [("cudaLaunchKernel", python), ("gemm_bf16", stream7)],
            [("cudaMemcpyAsync", python), ("memcpy", stream7)],
            [("cudaStreamSynchronize", python), ("sync", sync)],
        ];
        assert_eq!(pairs, want.map(|ends| ends.map(|(n, uuid)| (n.to_string(), uuid)).to_vec()));
    }

    #[test]
    fn empty_trace_is_one_process_track() {
        let d = decode(&TraceData::default());
        assert_eq!(d.packets.len(), 1);
        assert_eq!(d.packets[0].sequence_flags, Some(SEQ_INCREMENTAL_STATE_CLEARED));
        assert_eq!(d.packets[0].timestamp, Some(0));
        let track = d.packets[0].track.as_ref().expect("a descriptor");
        assert_eq!(track.process, Some(DecodedProcess { pid: Some(1), name: Some("lumen".into()) }));
        assert!(d.events.is_empty());
    }

    #[test]
    fn spans_that_do_not_nest_are_cut() {
        let trace = TraceData {
            spans: vec![
                span(7, 0, 10, 0, "outer", None),
                span(7, 5, 15, 1, "overhang", None),
                span(7, 20, 18, 0, "backwards", None),
                span(7, 20, 20, 0, "empty", None),
            ],
            ..TraceData::default()
        };
        let d = decode(&trace);
        let (slices, _) = replay(&d.on_track(d.thread_uuid(7)));
        let want = [("backwards", 20, 20, 0), ("empty", 20, 20, 0), ("outer", 0, 10, 0), ("overhang", 5, 10, 1)];
        assert_eq!(slices, want.map(|(name, start, end, depth)| (name.to_owned(), start, end, depth)));
    }

    #[test]
    fn decoder_errors_name_the_offset() {
        let bytes = to_perfetto(&sample());
        let err = decode_packets(&bytes[..bytes.len() - 1]).expect_err("truncated").to_string();
        assert!(err.contains("offset"), "{err}");

        assert_eq!(decode_packets(&[0x0b]).expect_err("group").to_string(), "unsupported wire type 3 for field 1 at offset 0");
        assert_eq!(
            decode_packets(&[0x0a, 0x02, 0x42, 0x00]).expect_err("wrong wire type").to_string(),
            "field 8 at offset 2 is not a varint"
        );
        assert_eq!(decode_packets(&[0x08; 1]).expect_err("no value").to_string(), "truncated varint at offset 1");
        let mut long = vec![0x08];
        long.extend([0xff; 11]);
        assert_eq!(decode_packets(&long).expect_err("long varint").to_string(), "varint at offset 1 is longer than 10 bytes");
        assert_eq!(
            decode_packets(&[0x0a, 0x05, 0x00]).expect_err("short").to_string(),
            "5 bytes at offset 2 run past the end of the enclosing message"
        );
        let unknown_fields = [0x0a, 0x07, 0x38, 0x07, 0x35, 1, 2, 3, 4];
        assert_eq!(decode_packets(&unknown_fields).unwrap(), vec![DecodedPacket::default()]);
    }
}
