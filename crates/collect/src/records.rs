//! CUPTI activity records turned into trace rows.
//!
//! Each record is read through a `#[repr(C)]` mirror of the leading fields of its CUPTI struct,
//! with enums as plain integers, so an enum value newer than these bindings can never be
//! undefined behaviour. Newer record versions only append fields, so the mirrors also read them.
//! The offsets are checked against CUPTI's own structs at compile time.

use cudarc::cupti::sys;
use lumen_trace::model::{ApiCallRow, GpuOpKind, GpuOpRow, MarkRow, SpanRow};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::mem::offset_of;
use std::sync::OnceLock;

#[repr(C)]
struct KernelRecord {
    kind: u32,
    cache_config: u8,
    shared_memory_config: u8,
    registers_per_thread: u16,
    partitioned_cache_requested: u32,
    partitioned_cache_executed: u32,
    start: u64,
    end: u64,
    completed: u64,
    device_id: u32,
    context_id: u32,
    stream_id: u32,
    grid: [i32; 3],
    block: [i32; 3],
    static_shared_memory: i32,
    dynamic_shared_memory: i32,
    local_memory_per_thread: u32,
    local_memory_total: u32,
    correlation_id: u32,
    grid_id: i64,
    name: *const c_char,
    reserved0: *mut c_void,
    queued: u64,
    submitted: u64,
    launch_type: u8,
    carveout_requested: u8,
    carveout: u8,
    padding: u8,
    shared_memory_executed: u32,
    graph_node_id: u64,
    shmem_limit_config: u32,
    graph_id: u32,
}

#[repr(C)]
struct MemcpyRecord {
    kind: u32,
    copy_kind: u8,
    src_kind: u8,
    dst_kind: u8,
    flags: u8,
    bytes: u64,
    start: u64,
    end: u64,
    device_id: u32,
    context_id: u32,
    stream_id: u32,
    correlation_id: u32,
    runtime_correlation_id: u32,
    pad: u32,
    reserved0: *mut c_void,
    graph_node_id: u64,
    graph_id: u32,
}

#[repr(C)]
struct MemsetRecord {
    kind: u32,
    value: u32,
    bytes: u64,
    start: u64,
    end: u64,
    device_id: u32,
    context_id: u32,
    stream_id: u32,
    correlation_id: u32,
    flags: u16,
    memory_kind: u16,
    pad: u32,
    reserved0: *mut c_void,
    graph_node_id: u64,
    graph_id: u32,
}

#[repr(C)]
struct ApiRecord {
    kind: u32,
    cbid: u32,
    start: u64,
    end: u64,
    process_id: u32,
    thread_id: u32,
    correlation_id: u32,
    return_value: u32,
}

#[repr(C)]
struct SyncRecord {
    kind: u32,
    sync_type: u32,
    start: u64,
    end: u64,
    correlation_id: u32,
    context_id: u32,
    stream_id: u32,
    cuda_event_id: u32,
}

#[repr(C)]
struct MarkerRecord {
    kind: u32,
    flags: u32,
    timestamp: u64,
    id: u32,
    object_kind: u32,
    /// Process and thread ids for thread objects; device, context, stream otherwise.
    object_id: [u32; 3],
    pad: u32,
    name: *const c_char,
    domain: *const c_char,
}

#[repr(C)]
struct GraphRecord {
    kind: u32,
    correlation_id: u32,
    start: u64,
    end: u64,
    device_id: u32,
    graph_id: u32,
    context_id: u32,
    stream_id: u32,
}

macro_rules! same_offsets {
    ($mine:ty, $theirs:ty, $($a:ident = $b:ident),+) => {
        $(const _: () = assert!(offset_of!($mine, $a) == offset_of!($theirs, $b));)+
    };
}

same_offsets!(
    KernelRecord,
    sys::CUpti_ActivityKernel9,
    start = start,
    device_id = deviceId,
    grid = gridX,
    block = blockX,
    static_shared_memory = staticSharedMemory,
    correlation_id = correlationId,
    name = name,
    graph_node_id = graphNodeId,
    graph_id = graphId
);
same_offsets!(
    MemcpyRecord,
    sys::CUpti_ActivityMemcpy6,
    bytes = bytes,
    start = start,
    stream_id = streamId,
    correlation_id = correlationId,
    graph_node_id = graphNodeId,
    graph_id = graphId
);
same_offsets!(
    MemsetRecord,
    sys::CUpti_ActivityMemset4,
    bytes = bytes,
    start = start,
    stream_id = streamId,
    correlation_id = correlationId,
    memory_kind = memoryKind,
    graph_node_id = graphNodeId,
    graph_id = graphId
);
same_offsets!(
    ApiRecord,
    sys::CUpti_ActivityAPI,
    cbid = cbid,
    start = start,
    thread_id = threadId,
    correlation_id = correlationId,
    return_value = returnValue
);
same_offsets!(
    SyncRecord,
    sys::CUpti_ActivitySynchronization2,
    sync_type = type_,
    start = start,
    correlation_id = correlationId,
    stream_id = streamId,
    cuda_event_id = cudaEventId
);
same_offsets!(
    MarkerRecord,
    sys::CUpti_ActivityMarker2,
    flags = flags,
    timestamp = timestamp,
    id = id,
    object_kind = objectKind,
    object_id = objectId,
    name = name,
    domain = domain
);
same_offsets!(
    GraphRecord,
    sys::CUpti_ActivityGraphTrace2,
    correlation_id = correlationId,
    start = start,
    device_id = deviceId,
    graph_id = graphId,
    stream_id = streamId
);

use sys::CUpti_ActivityKind as K;
const KERNEL: u32 = K::CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL as u32;
const MEMCPY: u32 = K::CUPTI_ACTIVITY_KIND_MEMCPY as u32;
const MEMSET: u32 = K::CUPTI_ACTIVITY_KIND_MEMSET as u32;
const RUNTIME: u32 = K::CUPTI_ACTIVITY_KIND_RUNTIME as u32;
const DRIVER: u32 = K::CUPTI_ACTIVITY_KIND_DRIVER as u32;
const SYNCHRONIZATION: u32 = K::CUPTI_ACTIVITY_KIND_SYNCHRONIZATION as u32;
const MARKER: u32 = K::CUPTI_ACTIVITY_KIND_MARKER as u32;
const GRAPH_TRACE: u32 = K::CUPTI_ACTIVITY_KIND_GRAPH_TRACE as u32;

const MARKER_START: u32 = sys::CUpti_ActivityFlag::CUPTI_ACTIVITY_FLAG_MARKER_START as u32;
const MARKER_END: u32 = sys::CUpti_ActivityFlag::CUPTI_ACTIVITY_FLAG_MARKER_END as u32;
const OBJECT_THREAD: u32 = sys::CUpti_ActivityObjectKind::CUPTI_ACTIVITY_OBJECT_THREAD as u32;
const MEMORY_PAGEABLE: u8 = 1;
const MEMORY_PINNED: u8 = 2;

/// Rows decoded so far in this process, and the NVTX ranges still open.
#[derive(Default)]
pub struct Rows {
    pub gpu_ops: Vec<GpuOpRow>,
    pub api_calls: Vec<ApiCallRow>,
    pub spans: Vec<SpanRow>,
    pub marks: Vec<MarkRow>,
    /// NVTX range id → (start, thread, name, depth).
    open_ranges: HashMap<u32, (u64, u64, String, u32)>,
    open_per_thread: HashMap<u64, u32>,
    api_names: HashMap<(u32, u32), String>,
    /// Records of kinds this collector does not turn into rows.
    pub skipped: u64,
}

unsafe fn text(p: *const c_char) -> String {
    if p.is_null() {
        String::new()
    } else {
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}

fn copy_kind(kind: u8) -> &'static str {
    match kind {
        1 => "HtoD",
        2 => "DtoH",
        3 => "HtoA",
        4 => "AtoH",
        5 => "AtoA",
        6 => "AtoD",
        7 => "DtoA",
        8 => "DtoD",
        9 => "HtoH",
        10 => "PtoP",
        _ => "unknown",
    }
}

fn sync_name(t: u32) -> &'static str {
    match t {
        1 => "event synchronize",
        2 => "stream wait event",
        3 => "stream synchronize",
        4 => "context synchronize",
        _ => "synchronize",
    }
}

fn api_name(cache: &mut HashMap<(u32, u32), String>, runtime: bool, cbid: u32) -> String {
    let domain = if runtime {
        sys::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_RUNTIME_API
    } else {
        sys::CUpti_CallbackDomain::CUPTI_CB_DOMAIN_DRIVER_API
    };
    cache
        .entry((domain as u32, cbid))
        .or_insert_with(|| {
            let mut name: *const c_char = std::ptr::null();
            let ok = unsafe { sys::cuptiGetCallbackName(domain, cbid, &mut name) } == sys::CUptiResult::CUPTI_SUCCESS;
            if ok && !name.is_null() {
                unsafe { text(name) }
            } else {
                format!("{} api {cbid}", if runtime { "runtime" } else { "driver" })
            }
        })
        .clone()
}

/// A GPU operation with its identity and timing; the kind-specific fields start empty.
#[allow(clippy::too_many_arguments)]
fn op(kind: GpuOpKind, start_ns: u64, end_ns: u64, pid: u32, device: u32, stream: Option<u64>, correlation: u32, name: String) -> GpuOpRow {
    GpuOpRow { kind, start_ns, end_ns, pid, device, stream, correlation: Some(correlation as u64), name, ..GpuOpRow::default() }
}

/// The start of a graph-launch record, `None` for any other kind.
///
/// # Safety
/// `record` must point to a complete CUPTI activity record.
pub unsafe fn graph_launch_start(record: *const u32) -> Option<u64> {
    (*record == GRAPH_TRACE).then(|| (*(record as *const GraphRecord)).start)
}

impl Rows {
    /// Decodes one activity record of process `pid`.
    ///
    /// # Safety
    /// `record` must point to a complete CUPTI activity record.
    pub unsafe fn push(&mut self, record: *const u32, pid: u32) {
        let kind = *record;
        let optional = |v: u32| (v != 0).then_some(v as u64);
        match kind {
            KERNEL => {
                let r = &*(record as *const KernelRecord);
                let dims = |d: [i32; 3]| Some([d[0] as u32, d[1] as u32, d[2] as u32]);
                self.gpu_ops.push(GpuOpRow {
                    grid: dims(r.grid),
                    block: dims(r.block),
                    registers: Some(r.registers_per_thread as u32),
                    shared_mem_bytes: Some((r.static_shared_memory.max(0) + r.dynamic_shared_memory.max(0)) as u64),
                    graph_id: optional(r.graph_id),
                    graph_node_id: (r.graph_node_id != 0).then_some(r.graph_node_id),
                    ..op(
                        GpuOpKind::Kernel,
                        r.start,
                        r.end,
                        pid,
                        r.device_id,
                        Some(r.stream_id as u64),
                        r.correlation_id,
                        demangle(&text(r.name)),
                    )
                });
            }
            MEMCPY => {
                let r = &*(record as *const MemcpyRecord);
                let host = [r.src_kind, r.dst_kind].into_iter().find(|&k| k == MEMORY_PAGEABLE || k == MEMORY_PINNED);
                let name = format!("memcpy {}", copy_kind(r.copy_kind));
                self.gpu_ops.push(GpuOpRow {
                    bytes: Some(r.bytes),
                    copy_kind: Some(copy_kind(r.copy_kind).to_string()),
                    pinned: host.map(|k| k == MEMORY_PINNED),
                    graph_id: optional(r.graph_id),
                    graph_node_id: (r.graph_node_id != 0).then_some(r.graph_node_id),
                    ..op(GpuOpKind::Memcpy, r.start, r.end, pid, r.device_id, Some(r.stream_id as u64), r.correlation_id, name)
                });
            }
            MEMSET => {
                let r = &*(record as *const MemsetRecord);
                self.gpu_ops.push(GpuOpRow {
                    bytes: Some(r.bytes),
                    graph_id: optional(r.graph_id),
                    graph_node_id: (r.graph_node_id != 0).then_some(r.graph_node_id),
                    ..op(GpuOpKind::Memset, r.start, r.end, pid, r.device_id, Some(r.stream_id as u64), r.correlation_id, "memset".into())
                });
            }
            RUNTIME | DRIVER => {
                let r = &*(record as *const ApiRecord);
                self.api_calls.push(ApiCallRow {
                    start_ns: r.start,
                    end_ns: r.end,
                    pid,
                    tid: r.thread_id as u64,
                    name: api_name(&mut self.api_names, kind == RUNTIME, r.cbid),
                    correlation: Some(r.correlation_id as u64),
                    result: Some(r.return_value as i64),
                });
            }
            SYNCHRONIZATION => {
                let r = &*(record as *const SyncRecord);
                let stream = (r.stream_id != u32::MAX).then_some(r.stream_id as u64);
                self.gpu_ops.push(op(GpuOpKind::Sync, r.start, r.end, pid, 0, stream, r.correlation_id, sync_name(r.sync_type).into()));
            }
            GRAPH_TRACE => {
                let r = &*(record as *const GraphRecord);
                self.gpu_ops.push(GpuOpRow {
                    graph_id: Some(r.graph_id as u64),
                    ..op(
                        GpuOpKind::Graph,
                        r.start,
                        r.end,
                        pid,
                        r.device_id,
                        Some(r.stream_id as u64),
                        r.correlation_id,
                        format!("graph {}", r.graph_id),
                    )
                });
            }
            MARKER => self.marker(&*(record as *const MarkerRecord)),
            _ => self.skipped += 1,
        }
    }

    /// NVTX: a start and an end with the same id make a span; an instantaneous marker a mark.
    unsafe fn marker(&mut self, r: &MarkerRecord) {
        let tid = if r.object_kind == OBJECT_THREAD { r.object_id[1] as u64 } else { 0 };
        if r.flags & MARKER_END != 0 {
            if let Some((start, tid, name, depth)) = self.open_ranges.remove(&r.id) {
                if let Some(open) = self.open_per_thread.get_mut(&tid) {
                    *open = open.saturating_sub(1);
                }
                self.spans.push(SpanRow {
                    start_ns: start,
                    end_ns: r.timestamp,
                    tid,
                    name,
                    category: "nvtx".into(),
                    depth,
                    iteration: None,
                    args: None,
                });
            }
            return;
        }
        let name = text(r.name);
        let domain = text(r.domain);
        let name = if domain.is_empty() { name } else { format!("{domain}: {name}") };
        if r.flags & MARKER_START != 0 {
            let open = self.open_per_thread.entry(tid).or_insert(0);
            self.open_ranges.insert(r.id, (r.timestamp, tid, name, *open));
            *open += 1;
        } else {
            self.marks.push(MarkRow { ts_ns: r.timestamp, tid, name, category: "nvtx".into(), iteration: None, args: None });
        }
    }

    /// Takes the finished rows, leaving open NVTX ranges in place.
    pub fn take(&mut self) -> Rows {
        Rows {
            gpu_ops: std::mem::take(&mut self.gpu_ops),
            api_calls: std::mem::take(&mut self.api_calls),
            spans: std::mem::take(&mut self.spans),
            marks: std::mem::take(&mut self.marks),
            skipped: std::mem::take(&mut self.skipped),
            ..Rows::default()
        }
    }

    pub fn is_empty(&self) -> bool {
        self.gpu_ops.is_empty() && self.api_calls.is_empty() && self.spans.is_empty() && self.marks.is_empty()
    }
}

/// libstdc++'s `__cxa_demangle`, the demangler behind c++filt, Nsight Systems and torch.profiler,
/// found at run time (already loaded, or `libstdc++.so.6`), so kernel names read exactly as theirs.
type CxaDemangle = unsafe extern "C" fn(*const c_char, *mut c_char, *mut usize, *mut c_int) -> *mut c_char;

fn cxa_demangle() -> Option<CxaDemangle> {
    static FOUND: OnceLock<Option<CxaDemangle>> = OnceLock::new();
    *FOUND.get_or_init(|| unsafe {
        let name = c"__cxa_demangle";
        let mut symbol = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        if symbol.is_null() {
            let lib = libc::dlopen(c"libstdc++.so.6".as_ptr(), libc::RTLD_LAZY | libc::RTLD_LOCAL);
            if !lib.is_null() {
                symbol = libc::dlsym(lib, name.as_ptr());
            }
        }
        (!symbol.is_null()).then(|| std::mem::transmute::<*mut c_void, CxaDemangle>(symbol))
    })
}

/// Itanium C++ names (`_Z...`) demangled, by libstdc++ where it is present and by cpp_demangle
/// otherwise; anything else as given.
pub fn demangle(name: &str) -> String {
    if !name.starts_with("_Z") {
        return name.to_string();
    }
    if let (Some(f), Ok(mangled)) = (cxa_demangle(), CString::new(name)) {
        let mut status: c_int = -1;
        let text = unsafe { f(mangled.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), &mut status) };
        if !text.is_null() {
            let out = (status == 0).then(|| unsafe { CStr::from_ptr(text) }.to_string_lossy().into_owned());
            unsafe { libc::free(text as *mut c_void) };
            if let Some(out) = out {
                return out;
            }
        }
    }
    cpp_demangle::Symbol::new(name)
        .ok()
        .and_then(|symbol| symbol.demangle(&cpp_demangle::DemangleOptions::default()).ok())
        .unwrap_or_else(|| name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(flags: u32, id: u32, ts: u64, name: &CStr) -> MarkerRecord {
        MarkerRecord {
            kind: MARKER,
            flags,
            timestamp: ts,
            id,
            object_kind: OBJECT_THREAD,
            object_id: [7, 42, 0],
            pad: 0,
            name: name.as_ptr(),
            domain: std::ptr::null(),
        }
    }

    #[test]
    fn records_become_rows() {
        let mut rows = Rows::default();
        let name = c"_Z6kernelPfi";
        let kernel = KernelRecord {
            kind: KERNEL,
            cache_config: 0,
            shared_memory_config: 0,
            registers_per_thread: 40,
            partitioned_cache_requested: 0,
            partitioned_cache_executed: 0,
            start: 100,
            end: 250,
            completed: 250,
            device_id: 0,
            context_id: 1,
            stream_id: 7,
            grid: [128, 2, 1],
            block: [256, 1, 1],
            static_shared_memory: 1024,
            dynamic_shared_memory: 2048,
            local_memory_per_thread: 0,
            local_memory_total: 0,
            correlation_id: 99,
            grid_id: 1,
            name: name.as_ptr(),
            reserved0: std::ptr::null_mut(),
            queued: 0,
            submitted: 0,
            launch_type: 0,
            carveout_requested: 0,
            carveout: 0,
            padding: 0,
            shared_memory_executed: 0,
            graph_node_id: 5,
            shmem_limit_config: 0,
            graph_id: 3,
        };
        let copy = MemcpyRecord {
            kind: MEMCPY,
            copy_kind: 1,
            src_kind: MEMORY_PAGEABLE,
            dst_kind: 3,
            flags: 1,
            bytes: 4096,
            start: 10,
            end: 20,
            device_id: 0,
            context_id: 1,
            stream_id: 7,
            correlation_id: 98,
            runtime_correlation_id: 0,
            pad: 0,
            reserved0: std::ptr::null_mut(),
            graph_node_id: 0,
            graph_id: 0,
        };
        unsafe {
            rows.push(&kernel as *const KernelRecord as *const u32, 11);
            rows.push(&copy as *const MemcpyRecord as *const u32, 11);
            let (a, b) = (c"iter 3", c"forward");
            rows.push(&marker(MARKER_START, 1, 50, a) as *const MarkerRecord as *const u32, 11);
            rows.push(&marker(MARKER_START, 2, 60, b) as *const MarkerRecord as *const u32, 11);
            rows.push(&marker(MARKER_END, 2, 90, c"") as *const MarkerRecord as *const u32, 11);
            rows.push(&marker(MARKER_END, 1, 300, c"") as *const MarkerRecord as *const u32, 11);
            rows.push(&[12345u32, 0, 0, 0] as *const u32, 11);
        }
        let k = &rows.gpu_ops[0];
        assert_eq!((k.kind, k.start_ns, k.end_ns, k.stream, k.correlation), (GpuOpKind::Kernel, 100, 250, Some(7), Some(99)));
        assert_eq!(k.name, "kernel(float*, int)");
        assert_eq!((k.grid, k.block, k.registers, k.shared_mem_bytes), (Some([128, 2, 1]), Some([256, 1, 1]), Some(40), Some(3072)));
        assert_eq!((k.graph_id, k.graph_node_id, k.pid), (Some(3), Some(5), 11));
        let m = &rows.gpu_ops[1];
        assert_eq!((m.kind, m.bytes, m.copy_kind.as_deref(), m.pinned), (GpuOpKind::Memcpy, Some(4096), Some("HtoD"), Some(false)));
        let spans: Vec<_> = rows.spans.iter().map(|s| (s.name.as_str(), s.start_ns, s.end_ns, s.tid, s.depth)).collect();
        assert_eq!(spans, [("forward", 60, 90, 42, 1), ("iter 3", 50, 300, 42, 0)]);
        assert_eq!(rows.skipped, 1, "an unknown kind is counted, not decoded");
    }

    #[test]
    fn kernel_names_read_as_the_platform_demangler_prints_them() {
        let torch = "_ZN2at6native29vectorized_elementwise_kernelILi4ENS0_15CUDAFunctor_addIfEESt5arrayIPcLm3EEEEviT0_T1_";
        assert_eq!(
            demangle(torch),
            "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul> >\
             (int, at::native::CUDAFunctor_add<float>, std::array<char*, 3ul>)"
        );
        assert_eq!(demangle("nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT"), "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT");
        assert_eq!(demangle("_Zbroken"), "_Zbroken", "a name that does not demangle stays as given");
    }
}
