//! GPU metrics for `lumen profile --gpu-metrics`, sampled from the `lumen` process while the
//! command runs: CUPTI PM sampling first (crates/collect/src/pm_sampling.rs); when it cannot run, NVML,
//! whose source then says why. On GPUs with GPM (Hopper and later) NVML gives SM activity, DRAM
//! bandwidth utilisation and tensor-pipe activity per interval; elsewhere its plain utilisation
//! (the share of time a kernel ran, and the memory controller's busy share). The trace's `meta`
//! names the source.

use crate::pm_sampling;
use anyhow::{anyhow, bail, Context, Result};
use lumen_trace::model::CounterRow;
use lumen_trace::now_ns;
use nvml_wrapper_sys::bindings::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// GPM metrics sampled, with their counter names.
const GPM_METRICS: [(u32, &str); 3] = [
    (nvmlGpmMetricId_t_NVML_GPM_METRIC_SM_UTIL, "sm active %"),
    (nvmlGpmMetricId_t_NVML_GPM_METRIC_DRAM_BW_UTIL, "dram bandwidth %"),
    (nvmlGpmMetricId_t_NVML_GPM_METRIC_ANY_TENSOR_UTIL, "tensor active %"),
];

/// A sampler thread; `finish` stops it and returns its rows and the source it used.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(Vec<CounterRow>, String)>,
    /// Why CUPTI PM sampling could not run, when NVML samples instead.
    pm_unavailable: Option<anyhow::Error>,
}

fn ok(r: nvmlReturn_t, what: &str) -> Result<()> {
    if r != nvmlReturn_enum_NVML_SUCCESS {
        bail!("{what} returned NVML error {r}");
    }
    Ok(())
}

struct Device {
    index: u32,
    handle: nvmlDevice_t,
    /// Two GPM samples, swapped each interval; `None` without GPM.
    gpm: Option<(nvmlGpmSample_t, nvmlGpmSample_t)>,
}

// SAFETY: NVML handles and samples may be used from any thread; only the sampler thread uses
// them once `open` returns.
unsafe impl Send for Device {}

/// Opens NVML and every device, preferring GPM where the device supports it.
fn open() -> Result<(NvmlLib, Vec<Device>)> {
    let lib = unsafe { NvmlLib::new("libnvidia-ml.so.1") }.context("NVML (libnvidia-ml.so.1) could not be loaded")?;
    if lib.nvmlInit_v2.is_err() || lib.nvmlDeviceGetCount_v2.is_err() || lib.nvmlDeviceGetHandleByIndex_v2.is_err() {
        bail!("this NVML lacks the functions lumen needs");
    }
    unsafe {
        ok(lib.nvmlInit_v2(), "nvmlInit")?;
        let mut count = 0;
        ok(lib.nvmlDeviceGetCount_v2(&mut count), "nvmlDeviceGetCount")?;
        let gpm_present = lib.nvmlGpmQueryDeviceSupport.is_ok()
            && lib.nvmlGpmSampleAlloc.is_ok()
            && lib.nvmlGpmSampleGet.is_ok()
            && lib.nvmlGpmMetricsGet.is_ok();
        let mut devices = Vec::new();
        for index in 0..count {
            let mut handle = std::ptr::null_mut();
            ok(lib.nvmlDeviceGetHandleByIndex_v2(index, &mut handle), "nvmlDeviceGetHandleByIndex")?;
            let mut support = nvmlGpmSupport_t { version: NVML_GPM_SUPPORT_VERSION, isSupportedDevice: 0 };
            let gpm = if gpm_present
                && lib.nvmlGpmQueryDeviceSupport(handle, &mut support) == nvmlReturn_enum_NVML_SUCCESS
                && support.isSupportedDevice != 0
            {
                let (mut a, mut b) = (std::ptr::null_mut(), std::ptr::null_mut());
                ok(lib.nvmlGpmSampleAlloc(&mut a), "nvmlGpmSampleAlloc")?;
                ok(lib.nvmlGpmSampleAlloc(&mut b), "nvmlGpmSampleAlloc")?;
                ok(lib.nvmlGpmSampleGet(handle, a), "nvmlGpmSampleGet")?;
                Some((a, b))
            } else {
                None
            };
            devices.push(Device { index, handle, gpm });
        }
        Ok((lib, devices))
    }
}

/// One interval's counters for `d`.
unsafe fn sample(lib: &NvmlLib, d: &mut Device, ts_ns: u64, rows: &mut Vec<CounterRow>) {
    let row = |name: &str, value: f64| CounterRow { ts_ns, name: name.into(), device: Some(d.index), value };
    match d.gpm {
        Some((previous, current)) => {
            if lib.nvmlGpmSampleGet(d.handle, current) != nvmlReturn_enum_NVML_SUCCESS {
                return;
            }
            let mut get: nvmlGpmMetricsGet_t = std::mem::zeroed();
            get.version = NVML_GPM_METRICS_GET_VERSION;
            get.numMetrics = GPM_METRICS.len() as u32;
            get.sample1 = previous;
            get.sample2 = current;
            for (slot, (id, _)) in get.metrics.iter_mut().zip(GPM_METRICS) {
                slot.metricId = id;
            }
            if lib.nvmlGpmMetricsGet(&mut get) == nvmlReturn_enum_NVML_SUCCESS {
                for (m, (_, name)) in get.metrics.iter().zip(GPM_METRICS) {
                    // GPM reports NaN for a metric it could not compute over the interval.
                    if m.nvmlReturn == nvmlReturn_enum_NVML_SUCCESS && m.value.is_finite() {
                        rows.push(row(name, m.value));
                    }
                }
            }
            d.gpm = Some((current, previous));
        }
        None => {
            let mut u = nvmlUtilization_t { gpu: 0, memory: 0 };
            if lib.nvmlDeviceGetUtilizationRates(d.handle, &mut u) == nvmlReturn_enum_NVML_SUCCESS {
                rows.push(row("gpu utilization %", u.gpu as f64));
                rows.push(row("memory controller utilization %", u.memory as f64));
            }
        }
    }
}

/// Starts NVML sampling every `interval` until `stop` is set, or says why it cannot.
fn spawn_nvml(interval: Duration, stop: Arc<AtomicBool>) -> Result<JoinHandle<(Vec<CounterRow>, String)>> {
    let (lib, mut devices) = open()?;
    if devices.is_empty() {
        bail!("NVML sees no GPU");
    }
    let source = if devices.iter().all(|d| d.gpm.is_some()) { "nvml-gpm" } else { "nvml-utilization" }.to_string();
    Ok(std::thread::spawn(move || {
        let mut rows = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(interval);
            let ts = now_ns();
            for d in devices.iter_mut() {
                unsafe { sample(&lib, d, ts, &mut rows) };
            }
        }
        unsafe {
            for d in &devices {
                if let Some((a, b)) = d.gpm {
                    lib.nvmlGpmSampleFree(a);
                    lib.nvmlGpmSampleFree(b);
                }
            }
            lib.nvmlShutdown();
        }
        (rows, source)
    }))
}

impl Sampler {
    /// Starts sampling every `interval` with CUPTI PM sampling, else NVML, or says why neither can.
    pub fn start(interval: Duration) -> Result<Sampler> {
        let stop = Arc::new(AtomicBool::new(false));
        let why = match pm_sampling::spawn(interval, stop.clone()) {
            Ok(thread) => return Ok(Sampler { stop, thread, pm_unavailable: None }),
            Err(why) => why,
        };
        match spawn_nvml(interval, stop.clone()) {
            Ok(thread) => Ok(Sampler { stop, thread, pm_unavailable: Some(why) }),
            Err(nvml) => Err(anyhow!("{nvml:#}; CUPTI PM sampling unavailable: {why:#}")),
        }
    }

    pub fn finish(self) -> (Vec<CounterRow>, String) {
        self.stop.store(true, Ordering::Relaxed);
        let (rows, source) = self.thread.join().unwrap_or_else(|_| (Vec::new(), "failed".into()));
        match self.pm_unavailable {
            Some(why) => (rows, format!("{source} (CUPTI PM sampling unavailable: {why:#})")),
            None => (rows, source),
        }
    }
}
