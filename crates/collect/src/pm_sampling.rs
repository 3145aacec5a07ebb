//! CUPTI PM sampling for `lumen profile --gpu-metrics`: from the profiling process, the GPU samples
//! CUDA device 0's performance monitors every interval (SM activity, DRAM read and write
//! throughput, tensor-pipe activity, each as a share of its peak) and a thread of its own decodes
//! them every 100 ms into counter rows on lumen's clock. [`spawn`] says why sampling cannot run
//! (no CUDA or CUPTI, an unsupported GPU, no permission for profiling counters), so that
//! [`crate::gpu_metrics`] can fall back to NVML.

use crate::cupti::check;
use anyhow::{anyhow, bail, Context, Result};
use cudarc::cupti::sys;
use lumen_trace::model::CounterRow;
use lumen_trace::now_ns;
use std::collections::HashSet;
use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

/// Each counter's row name, then the metrics that can give it (base metric and rollup, read as
/// [`SUBMETRIC`]), best first. Checked on an H100 against `ncu` on the same kernels: the
/// `dramc__*_throughput.avg` forms PM sampling also accepts read about 1/80 of the DRAM traffic
/// `dram__bytes_*.sum` gives (0.56% against ncu's 45% on a streaming kernel), so they are not used.
const COUNTERS: [(&str, &[&str]); 4] = [
    ("sm active %", &["sm__cycles_active.avg"]),
    ("dram read %", &["dram__bytes_read.sum"]),
    ("dram write %", &["dram__bytes_write.sum"]),
    (
        "tensor active %",
        &[
            "sm__pipe_tensor_cycles_active_realtime.avg",
            "sm__pipe_tensor_op_hmma_cycles_active.avg",
            "sm__pipe_tensor_cycles_active.avg",
            "sm__inst_executed_pipe_tensor.avg",
        ],
    ),
];
/// Every counter is read as a percentage of its peak over the sample.
const SUBMETRIC: &str = "pct_of_peak_sustained_elapsed";

/// The CUDA device sampled: the one lumen runs on.
const DEVICE: usize = 0;
/// Where the GPU writes raw samples until they are decoded.
const HARDWARE_BUFFER_BYTES: usize = 512 << 20;
const DECODE_EVERY: Duration = Duration::from_millis(100);

/// The CUPTI functions used, looked up before any is called: a libcupti older than CUDA 12.6
/// lacks the PM sampling ones.
const FUNCTIONS: &str = "cuptiGetResultString cuptiGetTimestamp cuptiProfilerInitialize cuptiProfilerDeInitialize \
    cuptiDeviceGetChipName cuptiProfilerHostInitialize cuptiProfilerHostDeinitialize cuptiProfilerHostGetBaseMetrics \
    cuptiProfilerHostConfigAddMetrics cuptiProfilerHostGetConfigImageSize cuptiProfilerHostGetConfigImage \
    cuptiProfilerHostGetNumOfPasses cuptiProfilerHostEvaluateToGpuValues cuptiPmSamplingGetCounterAvailability \
    cuptiPmSamplingEnable cuptiPmSamplingSetConfig cuptiPmSamplingGetCounterDataSize cuptiPmSamplingCounterDataImageInitialize \
    cuptiPmSamplingStart cuptiPmSamplingStop cuptiPmSamplingDisable cuptiPmSamplingDecodeData \
    cuptiPmSamplingGetCounterDataInfo cuptiPmSamplingCounterDataGetSampleInfo";

/// Calls a CUPTI function on its parameter struct: zeroed (`pPriv` must be null), `structSize`
/// set to `size`, then filled in by `fill`; returns the struct for its outputs.
///
/// # Safety
/// `T` must be `f`'s parameter struct, whose first field is `structSize` and for which zero is a
/// valid value of every field, and the pointers `fill` stores must stay valid across the call.
unsafe fn call<T>(f: unsafe fn(*mut T) -> sys::CUptiResult, what: &str, size: u32, fill: impl FnOnce(&mut T)) -> Result<T> {
    let mut p: T = std::mem::zeroed();
    *(&mut p as *mut T).cast::<usize>() = size as usize;
    fill(&mut p);
    check(f(&mut p), what)?;
    Ok(p)
}

/// `call` on `sys::$function`, named in errors, with `sys::$size`.
macro_rules! cupti {
    ($function:ident, $size:ident, $fill:expr) => {
        // SAFETY: every use passes the function's own struct and its size, filled with pointers
        // into buffers that outlive the call.
        unsafe { call(sys::$function, stringify!($function), sys::$size, $fill) }
    };
}

fn pointers(names: &[&CStr]) -> Vec<*const c_char> {
    names.iter().map(|n| n.as_ptr()).collect()
}

/// For each counter, the full names of its candidate metrics whose base metric (the name before
/// the first `.`) is among the chip's `supported` ones, best first.
fn candidates(supported: &HashSet<String>) -> Vec<(&'static str, Vec<String>)> {
    let known = |m: &&&str| m.split('.').next().is_some_and(|base| supported.contains(base));
    COUNTERS.iter().map(|&(name, metrics)| (name, metrics.iter().filter(known).map(|m| format!("{m}.{SUBMETRIC}")).collect())).collect()
}

/// Offset from CUPTI's clock to lumen's ([`now_ns`], CLOCK_MONOTONIC), from a CUPTI timestamp
/// read between two of lumen's. This assumes PM sample timestamps are on the clock
/// `cuptiGetTimestamp` reads: CUPTI gives both in nanoseconds but does not say they share a clock.
fn clock_offset() -> Result<i64> {
    let before = now_ns();
    let mut cupti = 0;
    check(unsafe { sys::cuptiGetTimestamp(&mut cupti) }, "cuptiGetTimestamp")?;
    let after = now_ns();
    Ok(offset_between(before + (after - before) / 2, cupti))
}

fn offset_between(lumen_ns: u64, cupti_ns: u64) -> i64 {
    lumen_ns.wrapping_sub(cupti_ns) as i64
}

fn on_lumen_clock(cupti_ns: u64, offset: i64) -> u64 {
    cupti_ns.saturating_add_signed(offset)
}

/// CUDA and CUPTI's profiler, initialised for this process until dropped.
struct Profiler;

impl Profiler {
    fn init() -> Result<Profiler> {
        // SAFETY: these only try to open the libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("no CUDA driver (libcuda.so) on this machine");
        }
        if !unsafe { sys::is_culib_present() } {
            bail!("CUPTI (libcupti.so) could not be loaded; set LD_LIBRARY_PATH to the CUDA toolkit's lib directory");
        }
        // SAFETY: looks the names up without calling them; `culib` loads since the check passed.
        let lacks = |f: &&str| unsafe { sys::culib().get::<unsafe extern "C" fn()>(f.as_bytes()) }.is_err();
        if let Some(missing) = FUNCTIONS.split_whitespace().find(lacks) {
            bail!("this libcupti lacks {missing} (PM sampling needs CUDA 12.6 or later)");
        }
        cudarc::driver::result::init().map_err(|e| anyhow!("cuInit failed: {e:?}"))?;
        cupti!(cuptiProfilerInitialize, Profiler_Initialize_Params_STRUCT_SIZE, |_| ())?;
        Ok(Profiler)
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        let _ = cupti!(cuptiProfilerDeInitialize, Profiler_DeInitialize_Params_STRUCT_SIZE, |_| ());
    }
}

/// A PM sampling host object for one chip (metric enumeration, configuration, evaluation), with
/// the chip name and counter-availability image it was made from, kept while it lives.
struct Host {
    object: *mut sys::CUpti_Profiler_Host_Object,
    _chip: CString,
    _availability: Vec<u8>,
}

impl Host {
    fn new(chip: &CStr, availability: &[u8]) -> Result<Host> {
        let (chip, availability) = (chip.to_owned(), availability.to_vec());
        let p = cupti!(cuptiProfilerHostInitialize, Profiler_Host_Initialize_Params_STRUCT_SIZE, |p| {
            p.profilerType = sys::CUpti_ProfilerType::CUPTI_PROFILER_TYPE_PM_SAMPLING;
            p.pChipName = chip.as_ptr();
            p.pCounterAvailabilityImage = availability.as_ptr();
        })?;
        Ok(Host { object: p.pHostObject, _chip: chip, _availability: availability })
    }

    /// The chip's base metrics of every type.
    fn base_metrics(&self) -> Result<HashSet<String>> {
        use sys::CUpti_MetricType::*;
        let mut names = HashSet::new();
        for metric_type in [CUPTI_METRIC_TYPE_COUNTER, CUPTI_METRIC_TYPE_RATIO, CUPTI_METRIC_TYPE_THROUGHPUT] {
            let p = cupti!(cuptiProfilerHostGetBaseMetrics, Profiler_Host_GetBaseMetrics_Params_STRUCT_SIZE, |p| {
                p.pHostObject = self.object;
                p.metricType = metric_type;
            })?;
            // SAFETY: CUPTI returns `numMetrics` C strings, owned by the host object.
            names.extend((0..p.numMetrics).map(|i| unsafe { CStr::from_ptr(*p.ppMetricNames.add(i)) }.to_string_lossy().into_owned()));
        }
        Ok(names)
    }

    fn add(&self, metrics: &[&CStr]) -> Result<()> {
        let mut names = pointers(metrics);
        cupti!(cuptiProfilerHostConfigAddMetrics, Profiler_Host_ConfigAddMetrics_Params_STRUCT_SIZE, |p| {
            p.pHostObject = self.object;
            p.ppMetricNames = names.as_mut_ptr();
            p.numMetrics = names.len();
        })
        .map(drop)
    }

    /// The config image of the metrics added, and the passes it needs.
    fn config_image(&self) -> Result<(Vec<u8>, usize)> {
        let size = cupti!(cuptiProfilerHostGetConfigImageSize, Profiler_Host_GetConfigImageSize_Params_STRUCT_SIZE, |p| {
            p.pHostObject = self.object
        })?;
        let mut image = vec![0u8; size.configImageSize];
        cupti!(cuptiProfilerHostGetConfigImage, Profiler_Host_GetConfigImage_Params_STRUCT_SIZE, |p| {
            p.pHostObject = self.object;
            p.configImageSize = image.len();
            p.pConfigImage = image.as_mut_ptr();
        })?;
        let passes = cupti!(cuptiProfilerHostGetNumOfPasses, Profiler_Host_GetNumOfPasses_Params_STRUCT_SIZE, |p| {
            p.configImageSize = image.len();
            p.pConfigImage = image.as_mut_ptr();
        })?;
        Ok((image, passes.numOfPasses))
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = cupti!(cuptiProfilerHostDeinitialize, Profiler_Host_Deinitialize_Params_STRUCT_SIZE, |p| p.pHostObject = self.object);
    }
}

/// A host configured for sampling: the host, the counters kept with their metrics, their config
/// image, and the counters skipped.
type Configured = (Host, Vec<(&'static str, CString)>, Vec<u8>, Vec<&'static str>);

/// Picks each counter's metric: the first candidate the chip has and CUPTI accepts. While the
/// set needs more than one pass (PM sampling takes one), the last counter is dropped.
fn configure(chip: &CStr, availability: &[u8]) -> Result<Configured> {
    let supported = Host::new(chip, availability)?.base_metrics()?;
    let accepted = |m: &CString| Host::new(chip, availability).and_then(|probe| probe.add(&[m])).is_ok();
    let (mut chosen, mut skipped) = (Vec::new(), Vec::new());
    for (name, metrics) in candidates(&supported) {
        match metrics.into_iter().filter_map(|m| CString::new(m).ok()).find(accepted) {
            Some(metric) => chosen.push((name, metric)),
            None => skipped.push(name),
        }
    }
    loop {
        if chosen.is_empty() {
            bail!("none of lumen's metrics can be sampled on chip {}", chip.to_string_lossy());
        }
        let host = Host::new(chip, availability)?;
        host.add(&chosen.iter().map(|(_, m)| m.as_c_str()).collect::<Vec<_>>())?;
        let (image, passes) = host.config_image()?;
        if passes <= 1 {
            return Ok((host, chosen, image, skipped));
        }
        skipped.extend(chosen.pop().map(|(name, _)| name));
    }
}

/// PM sampling on [`DEVICE`], stopped and disabled when dropped.
struct Session {
    pm: *mut sys::CUpti_PmSampling_Object,
    /// Dropped after `drop` disables sampling, and before the profiler is deinitialised.
    host: Host,
    _profiler: Profiler,
    counters: Vec<(&'static str, CString)>,
    /// The config image, kept while sampling runs.
    config: Vec<u8>,
    counter_data: Vec<u8>,
    /// The latest [`clock_offset`].
    offset: i64,
    started: bool,
}

impl Session {
    /// Configures sampling every `interval` and starts it; returns the counters skipped.
    fn open(interval: Duration) -> Result<(Session, Vec<&'static str>)> {
        let profiler = Profiler::init()?;
        let chip = cupti!(cuptiDeviceGetChipName, Device_GetChipName_Params_STRUCT_SIZE, |p| p.deviceIndex = DEVICE)?;
        // SAFETY: CUPTI returns a NUL-terminated name, copied at once.
        let chip = unsafe { CStr::from_ptr(chip.pChipName) }.to_owned();
        let available = cupti!(cuptiPmSamplingGetCounterAvailability, PmSampling_GetCounterAvailability_Params_STRUCT_SIZE, |p| {
            p.deviceIndex = DEVICE
        })?;
        let mut availability = vec![0u8; available.counterAvailabilityImageSize];
        cupti!(cuptiPmSamplingGetCounterAvailability, PmSampling_GetCounterAvailability_Params_STRUCT_SIZE, |p| {
            p.deviceIndex = DEVICE;
            p.counterAvailabilityImageSize = availability.len();
            p.pCounterAvailabilityImage = availability.as_mut_ptr();
        })?;
        let (host, counters, config, skipped) = configure(&chip, &availability)?;

        let enabled = cupti!(cuptiPmSamplingEnable, PmSampling_Enable_Params_STRUCT_SIZE, |p| p.deviceIndex = DEVICE)?;
        let pm = enabled.pPmSamplingObject;
        let mut session = Session { pm, host, _profiler: profiler, counters, config, counter_data: Vec::new(), offset: 0, started: false };
        let interval_ns = interval.as_nanos().clamp(1, u64::MAX as u128) as u64;
        cupti!(cuptiPmSamplingSetConfig, PmSampling_SetConfig_Params_STRUCT_SIZE, |p| {
            p.pPmSamplingObject = pm;
            p.configSize = session.config.len();
            p.pConfig = session.config.as_ptr();
            p.hardwareBufferSize = HARDWARE_BUFFER_BYTES;
            p.samplingInterval = interval_ns;
            p.triggerMode = sys::CUpti_PmSampling_TriggerMode::CUPTI_PM_SAMPLING_TRIGGER_MODE_GPU_TIME_INTERVAL;
        })?;
        // Room for a second of samples: ten decodes' worth.
        let mut names = session.metric_names();
        let size = cupti!(cuptiPmSamplingGetCounterDataSize, PmSampling_GetCounterDataSize_Params_STRUCT_SIZE, |p| {
            p.pPmSamplingObject = pm;
            p.pMetricNames = names.as_mut_ptr();
            p.numMetrics = names.len();
            p.maxSamples = (1_000_000_000 / interval_ns).clamp(1, u32::MAX as u64) as u32;
        })?;
        session.counter_data = vec![0u8; size.counterDataSize];
        session.reset_counter_data()?;
        session.offset = clock_offset()?;
        cupti!(cuptiPmSamplingStart, PmSampling_Start_Params_STRUCT_SIZE, |p| p.pPmSamplingObject = pm)?;
        session.started = true;
        Ok((session, skipped))
    }

    fn metric_names(&self) -> Vec<*const c_char> {
        pointers(&self.counters.iter().map(|(_, m)| m.as_c_str()).collect::<Vec<_>>())
    }

    fn reset_counter_data(&mut self) -> Result<()> {
        cupti!(cuptiPmSamplingCounterDataImageInitialize, PmSampling_CounterDataImage_Initialize_Params_STRUCT_SIZE, |p| {
            p.pPmSamplingObject = self.pm;
            p.counterDataSize = self.counter_data.len();
            p.pCounterData = self.counter_data.as_mut_ptr();
        })
        .map(drop)
    }

    /// Decodes the samples the GPU has completed into `rows`, timed at each sample's end as
    /// NVML's rows are at their interval's; returns whether the hardware buffer overflowed.
    fn decode(&mut self, rows: &mut Vec<CounterRow>) -> Result<bool> {
        if let Ok(offset) = clock_offset() {
            self.offset = offset;
        }
        let (pm, image_size) = (self.pm, self.counter_data.len());
        let mut names = self.metric_names();
        let mut values = vec![0f64; names.len()];
        let mut overflowed = false;
        loop {
            let image = self.counter_data.as_mut_ptr();
            let decoded = cupti!(cuptiPmSamplingDecodeData, PmSampling_DecodeData_Params_STRUCT_SIZE, |p| {
                p.pPmSamplingObject = pm;
                p.pCounterDataImage = image;
                p.counterDataImageSize = image_size;
            })?;
            overflowed |= decoded.overflow != 0;
            let info = cupti!(cuptiPmSamplingGetCounterDataInfo, PmSampling_GetCounterDataInfo_Params_STRUCT_SIZE, |p| {
                p.pCounterDataImage = image;
                p.counterDataImageSize = image_size;
            })?;
            for sample in 0..info.numCompletedSamples {
                let times =
                    cupti!(cuptiPmSamplingCounterDataGetSampleInfo, PmSampling_CounterData_GetSampleInfo_Params_STRUCT_SIZE, |p| {
                        p.pPmSamplingObject = pm;
                        p.pCounterDataImage = image;
                        p.counterDataImageSize = image_size;
                        p.sampleIndex = sample;
                    })?;
                cupti!(cuptiProfilerHostEvaluateToGpuValues, Profiler_Host_EvaluateToGpuValues_Params_STRUCT_SIZE, |p| {
                    p.pHostObject = self.host.object;
                    p.pCounterDataImage = image;
                    p.counterDataImageSize = image_size;
                    p.rangeIndex = sample;
                    p.ppMetricNames = names.as_mut_ptr();
                    p.numMetrics = names.len();
                    p.pMetricValues = values.as_mut_ptr();
                })?;
                let ts_ns = on_lumen_clock(times.endTimestamp, self.offset);
                for (&(name, _), &value) in self.counters.iter().zip(&values) {
                    if value.is_finite() {
                        rows.push(CounterRow { ts_ns, name: name.into(), device: Some(DEVICE as u32), value });
                    }
                }
            }
            self.reset_counter_data()?;
            if decoded.decodeStopReason != sys::CUpti_PmSampling_DecodeStopReason::CUPTI_PM_SAMPLING_DECODE_STOP_REASON_COUNTER_DATA_FULL {
                return Ok(overflowed);
            }
        }
    }

    /// Decodes every [`DECODE_EVERY`] until `stop` is set, then stops sampling and decodes the
    /// rest; returns the rows and the source, with what went wrong.
    fn run(mut self, stop: &AtomicBool, skipped: Vec<&str>) -> (Vec<CounterRow>, String) {
        let mut rows = Vec::new();
        let mut overflowed = false;
        let mut failed = None;
        while failed.is_none() && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(DECODE_EVERY);
            match self.decode(&mut rows) {
                Ok(overflow) => overflowed |= overflow,
                Err(why) => failed = Some(why),
            }
        }
        if failed.is_none() {
            self.started = false;
            let pm = self.pm;
            match cupti!(cuptiPmSamplingStop, PmSampling_Stop_Params_STRUCT_SIZE, |p| p.pPmSamplingObject = pm)
                .and_then(|_| self.decode(&mut rows))
            {
                Ok(overflow) => overflowed |= overflow,
                Err(why) => failed = Some(why),
            }
        }
        let mut notes = Vec::new();
        if !skipped.is_empty() {
            notes.push(format!("no metric for {}", skipped.join(", ")));
        }
        if overflowed {
            notes.push("the hardware buffer overflowed and samples were lost".into());
        }
        notes.extend(failed.map(|why| format!("decoding stopped: {why:#}")));
        let source = if notes.is_empty() { "cupti-pm-sampling".into() } else { format!("cupti-pm-sampling ({})", notes.join("; ")) };
        (rows, source)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let pm = self.pm;
        if self.started {
            let _ = cupti!(cuptiPmSamplingStop, PmSampling_Stop_Params_STRUCT_SIZE, |p| p.pPmSamplingObject = pm);
        }
        let _ = cupti!(cuptiPmSamplingDisable, PmSampling_Disable_Params_STRUCT_SIZE, |p| p.pPmSamplingObject = pm);
    }
}

/// Starts PM sampling on CUDA device 0 every `interval` on a thread of its own, which returns its
/// rows and source once `stop` is set; or says why it cannot start.
pub fn spawn(interval: Duration, stop: Arc<AtomicBool>) -> Result<JoinHandle<(Vec<CounterRow>, String)>> {
    let (ready, started) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("lumen-pm-sampling".into())
        .spawn(move || match Session::open(interval) {
            Ok((session, skipped)) => {
                let _ = ready.send(Ok(()));
                session.run(&stop, skipped)
            }
            Err(why) => {
                let _ = ready.send(Err(why));
                (Vec::new(), String::new())
            }
        })
        .context("cannot start its thread")?;
    match started.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(why)) => {
            let _ = thread.join();
            Err(why)
        }
        Err(_) => bail!("its thread failed while starting"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_those_whose_base_metric_the_chip_has_in_order() {
        let supported: HashSet<String> =
            ["sm__cycles_active", "dram__read_throughput", "dram__bytes_read", "sm__pipe_tensor_cycles_active"].map(String::from).into();
        let chosen = candidates(&supported);
        let names: Vec<&str> = chosen.iter().map(|(name, _)| *name).collect();
        assert_eq!(names, ["sm active %", "dram read %", "dram write %", "tensor active %"]);
        assert_eq!(chosen[0].1, ["sm__cycles_active.avg.pct_of_peak_sustained_elapsed"]);
        assert_eq!(chosen[1].1, ["dram__bytes_read.sum.pct_of_peak_sustained_elapsed"]);
        assert!(chosen[2].1.is_empty(), "no write metric is supported: {:?}", chosen[2].1);
        // `sm__pipe_tensor_cycles_active_realtime` is another base metric, not this one.
        assert_eq!(chosen[3].1, ["sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_elapsed"]);
    }

    #[test]
    fn cupti_times_move_onto_lumens_clock_by_the_offset() {
        let behind = offset_between(1_000, 5_000);
        assert_eq!(behind, -4_000);
        assert_eq!(on_lumen_clock(5_500, behind), 1_500);
        assert_eq!(on_lumen_clock(100, behind), 0, "times before lumen's clock began clamp to 0");
        let ahead = offset_between(1_700_000_000_000_000_000, 42);
        assert_eq!(on_lumen_clock(50, ahead), 1_700_000_000_000_000_008);
    }
}
