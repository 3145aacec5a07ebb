//! The GPU as lumen uses it: the driver probe (which never panics when libcuda is missing), the
//! primary context and one stream, device buffers, pinned host buffers, events, the CUDA
//! profiler switch, and stream capture into CUDA graphs.

use anyhow::{anyhow, bail, Result};
use cudarc::driver::result::{self as cu, DriverError};
use cudarc::driver::sys;
use std::ffi::c_void;
use std::sync::Arc;

/// Describes a driver error by name and text.
pub(crate) fn describe(e: DriverError) -> String {
    let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
    let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    format!("{name} ({text})")
}

pub(crate) trait DriverContext<T> {
    fn cuda(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> DriverContext<T> for std::result::Result<T, DriverError> {
    fn cuda(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| anyhow!("{}: CUDA error {}", what(), describe(e)))
    }
}

/// What the probe found.
#[derive(Debug, Clone)]
pub struct DeviceInfo {
    pub name: String,
    pub compute_capability: (i32, i32),
    pub multiprocessors: i32,
    pub total_memory: usize,
}

/// Whether the CUDA driver library can be loaded at all.
pub fn driver_present() -> bool {
    // SAFETY: only tries to open the library; no symbol is called.
    unsafe { sys::is_culib_present() }
}

/// One GPU: its primary context and the stream all of lumen's work runs on.
pub struct Gpu {
    pub info: DeviceInfo,
    pub ordinal: usize,
    context: sys::CUcontext,
    pub stream: sys::CUstream,
}

// SAFETY: driver handles may be used from any thread once the context is made current there,
// which `bind` does before every use.
unsafe impl Send for Gpu {}
unsafe impl Sync for Gpu {}

impl Gpu {
    /// How many GPUs the driver sees (0 without a driver).
    pub fn count() -> usize {
        if !driver_present() || cu::init().is_err() {
            return 0;
        }
        cu::device::get_count().map_or(0, |n| n.max(0) as usize)
    }

    /// Opens GPU `ordinal`, or says clearly why there is none.
    pub fn open(ordinal: usize) -> Result<Arc<Gpu>> {
        if !driver_present() {
            bail!("no CUDA driver: libcuda.so could not be loaded (is an NVIDIA driver installed?)");
        }
        cu::init().cuda(|| "cuInit".into())?;
        let count = cu::device::get_count().cuda(|| "cuDeviceGetCount".into())?;
        if ordinal as i32 >= count {
            bail!("no CUDA device {ordinal}: the driver sees {count} device(s)");
        }
        let device = cu::device::get(ordinal as i32).cuda(|| "cuDeviceGet".into())?;
        // SAFETY: `device` is a valid ordinal; the retained context lives as long as the process.
        let context = unsafe { cu::primary_ctx::retain(device) }.cuda(|| "cuDevicePrimaryCtxRetain".into())?;
        unsafe { cu::ctx::set_current(context) }.cuda(|| "cuCtxSetCurrent".into())?;
        let attr = |a| unsafe { cu::device::get_attribute(device, a) }.cuda(|| format!("cuDeviceGetAttribute({a:?})"));
        use sys::CUdevice_attribute as A;
        let info = DeviceInfo {
            name: cu::device::get_name(device).cuda(|| "cuDeviceGetName".into())?,
            compute_capability: (
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            ),
            multiprocessors: attr(A::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?,
            total_memory: unsafe { cu::device::total_mem(device) }.cuda(|| "cuDeviceTotalMem".into())?,
        };
        let stream = cu::stream::create(cu::stream::StreamKind::NonBlocking).cuda(|| "cuStreamCreate".into())?;
        Ok(Arc::new(Gpu { info, ordinal, context, stream }))
    }

    /// Makes this GPU's context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        unsafe { cu::ctx::set_current(self.context) }.cuda(|| "cuCtxSetCurrent".into())
    }

    /// (free, total) device memory in bytes.
    pub fn memory(&self) -> Result<(usize, usize)> {
        self.bind()?;
        cu::mem_get_info().cuda(|| "cuMemGetInfo".into())
    }

    pub fn alloc(&self, bytes: usize, what: &str) -> Result<DeviceBuffer> {
        self.bind()?;
        let ptr = unsafe { cu::malloc_sync(bytes.max(1)) }.map_err(|e| {
            let free = cu::mem_get_info().map(|(f, _)| f).unwrap_or(0);
            anyhow!("cannot allocate {what} ({:.2} GiB) on {}: {} with {:.2} GiB free", gib(bytes), self.info.name, describe(e), gib(free))
        })?;
        Ok(DeviceBuffer { ptr, bytes, context: self.context })
    }

    /// A device copy of `data`.
    pub fn upload<T: Copy>(&self, data: &[T], what: &str) -> Result<DeviceBuffer> {
        let buf = self.alloc(std::mem::size_of_val(data), what)?;
        unsafe { cu::memcpy_htod_sync(buf.ptr, data) }.cuda(|| format!("upload of {what}"))?;
        Ok(buf)
    }

    /// Queues a copy from host memory (pinned, for it to be asynchronous) to the device.
    pub fn copy_to_device<T: Copy>(&self, dst: u64, src: &[T]) -> Result<()> {
        unsafe { cu::memcpy_htod_async(dst, src, self.stream) }.cuda(|| "cuMemcpyHtoDAsync".into())
    }

    /// Queues a copy from the device into host memory (pinned, for it to be asynchronous).
    pub fn copy_to_host<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<()> {
        unsafe { cu::memcpy_dtoh_async(dst, src, self.stream) }.cuda(|| "cuMemcpyDtoHAsync".into())
    }

    /// Copies device memory into `dst`, waiting for the stream's earlier work first.
    pub fn download<T: Copy>(&self, dst: &mut [T], src: u64) -> Result<()> {
        self.synchronize()?;
        unsafe { cu::memcpy_dtoh_sync(dst, src) }.cuda(|| "cuMemcpyDtoH".into())
    }

    /// The median device time, in ms, of `runs` runs of `work` after `warmups` untimed ones: each
    /// between two events and waited for; a run the events could not time counts as infinite.
    pub fn median_ms(&self, warmups: usize, runs: usize, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
        let (a, b) = (self.event()?, self.event()?);
        let mut times = Vec::with_capacity(runs);
        for rep in 0..warmups + runs {
            a.record(self)?;
            work()?;
            b.record(self)?;
            self.synchronize()?;
            if rep >= warmups {
                times.push(a.elapsed_ms(&b).unwrap_or(f64::INFINITY));
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times[times.len() / 2])
    }

    /// Queues a copy of `height` rows of `width` bytes between device addresses: row i from
    /// `src + i * src_pitch` to `dst + i * dst_pitch` (a block of a matrix's rows or columns).
    pub fn copy_2d(&self, dst: u64, dst_pitch: usize, src: u64, src_pitch: usize, width: usize, height: usize) -> Result<()> {
        let copy = sys::CUDA_MEMCPY2D {
            srcXInBytes: 0,
            srcY: 0,
            srcMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            srcHost: std::ptr::null(),
            srcDevice: src,
            srcArray: std::ptr::null_mut(),
            srcPitch: src_pitch,
            dstXInBytes: 0,
            dstY: 0,
            dstMemoryType: sys::CUmemorytype::CU_MEMORYTYPE_DEVICE,
            dstHost: std::ptr::null_mut(),
            dstDevice: dst,
            dstArray: std::ptr::null_mut(),
            dstPitch: dst_pitch,
            WidthInBytes: width,
            Height: height,
        };
        // SAFETY: both ranges lie in device allocations of this context, the caller's promise.
        unsafe { sys::cuMemcpy2DAsync_v2(&copy, self.stream) }.result().cuda(|| "cuMemcpy2DAsync".into())
    }

    /// Fills `bytes` bytes at `ptr` with `value`.
    pub fn fill(&self, ptr: u64, value: u8, bytes: usize) -> Result<()> {
        unsafe { cu::memset_d8_async(ptr, value, bytes, self.stream) }.cuda(|| "cuMemsetD8Async".into())
    }

    pub fn synchronize(&self) -> Result<()> {
        unsafe { cu::stream::synchronize(self.stream) }.cuda(|| "cuStreamSynchronize".into())
    }

    /// Starts or stops the CUDA profiler's collection window (what `-c cudaProfilerApi` waits for).
    pub fn profiler(&self, on: bool) -> Result<()> {
        self.bind()?;
        let r = unsafe {
            if on {
                sys::cuProfilerStart()
            } else {
                sys::cuProfilerStop()
            }
        };
        r.result().cuda(|| if on { "cuProfilerStart".into() } else { "cuProfilerStop".into() })
    }

    pub fn event(&self) -> Result<Event> {
        self.bind()?;
        let e = cu::event::create(sys::CUevent_flags::CU_EVENT_DEFAULT).cuda(|| "cuEventCreate".into())?;
        Ok(Event { event: e })
    }

    /// Starts capturing this GPU's stream into a graph.
    pub fn begin_capture(&self) -> Result<()> {
        unsafe { cu::stream::begin_capture(self.stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }
            .cuda(|| "cuStreamBeginCapture".into())
    }

    /// Ends the capture and instantiates the graph.
    pub fn end_capture(&self) -> Result<Graph> {
        let graph = unsafe { cu::stream::end_capture(self.stream) }.cuda(|| "cuStreamEndCapture".into())?;
        let exec = unsafe { cu::graph::instantiate(graph, sys::CUgraphInstantiate_flags(0)) };
        unsafe { cu::graph::destroy(graph) }.cuda(|| "cuGraphDestroy".into())?;
        Ok(Graph { exec: exec.cuda(|| "cuGraphInstantiate".into())? })
    }

    pub fn launch_graph(&self, graph: &Graph) -> Result<()> {
        unsafe { cu::graph::launch(graph.exec, self.stream) }.cuda(|| "cuGraphLaunch".into())
    }

    pub fn is_capturing(&self) -> bool {
        matches!(unsafe { cu::stream::is_capturing(self.stream) }, Ok(sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_ACTIVE))
    }
}

fn gib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 30) as f64
}

/// Device memory, freed on drop.
pub struct DeviceBuffer {
    pub ptr: u64,
    pub bytes: usize,
    context: sys::CUcontext,
}

// SAFETY: a device pointer is plain data; freeing binds the owning context first.
unsafe impl Send for DeviceBuffer {}
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// The address `offset` bytes in.
    pub fn at(&self, offset: usize) -> u64 {
        self.ptr + offset as u64
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        unsafe {
            let _ = cu::ctx::set_current(self.context);
            let _ = cu::free_sync(self.ptr);
        }
    }
}

/// Page-locked host memory of `T`, so copies to and from the device run asynchronously.
pub struct PinnedBuffer<T: Copy> {
    ptr: *mut T,
    len: usize,
}

unsafe impl<T: Copy + Send> Send for PinnedBuffer<T> {}

impl<T: Copy + Default> PinnedBuffer<T> {
    pub fn new(gpu: &Gpu, len: usize) -> Result<Self> {
        gpu.bind()?;
        let bytes = len.max(1) * std::mem::size_of::<T>();
        let ptr = unsafe { cu::malloc_host(bytes, 0) }.cuda(|| format!("cuMemAllocHost of {bytes} bytes"))? as *mut T;
        let mut b = PinnedBuffer { ptr, len };
        b.as_mut_slice().fill(T::default());
        Ok(b)
    }

    pub fn as_slice(&self) -> &[T] {
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [T] {
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl<T: Copy> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        unsafe {
            let _ = cu::free_host(self.ptr as *mut c_void);
        }
    }
}

pub struct Event {
    event: sys::CUevent,
}

unsafe impl Send for Event {}

impl Event {
    pub fn record(&self, gpu: &Gpu) -> Result<()> {
        unsafe { cu::event::record(self.event, gpu.stream) }.cuda(|| "cuEventRecord".into())
    }

    /// Waits until the work queued before the event's last record has run.
    pub fn synchronize(&self) -> Result<()> {
        unsafe { cu::event::synchronize(self.event) }.cuda(|| "cuEventSynchronize".into())
    }

    /// Milliseconds from `self` to `end`, or `None` while `end` has not completed.
    pub fn elapsed_ms(&self, end: &Event) -> Option<f64> {
        unsafe { cu::event::query(end.event) }.ok()?;
        unsafe { cu::event::elapsed(self.event, end.event) }.ok().map(f64::from)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        unsafe {
            let _ = cu::event::destroy(self.event);
        }
    }
}

/// An instantiated CUDA graph.
pub struct Graph {
    exec: sys::CUgraphExec,
}

unsafe impl Send for Graph {}

impl Drop for Graph {
    fn drop(&mut self) {
        unsafe {
            let _ = cu::graph::exec_destroy(self.exec);
        }
    }
}
