//! What the collector records, as `lumen profile` passes it to every process it injects: one set
//! of environment variables, written by [`CollectorOptions::to_env`] and read back in the
//! injected process by [`CollectorOptions::from_env`].

use anyhow::{bail, Context, Result};
use std::path::PathBuf;

pub const ENV_DIR: &str = "LUMEN_COLLECT_DIR";
pub const ENV_CAPTURE: &str = "LUMEN_COLLECT_CAPTURE";
pub const ENV_RANGE_END: &str = "LUMEN_COLLECT_RANGE_END";
pub const ENV_GRAPH: &str = "LUMEN_COLLECT_GRAPH";
pub const ENV_TRACE: &str = "LUMEN_COLLECT_TRACE";

/// When collection runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// From the first CUDA call to the end of the process (`-c none`).
    Everything,
    /// Only between `cuProfilerStart` and `cuProfilerStop` (`-c cudaProfilerApi`).
    ProfilerApi,
}

/// What a `cuProfilerStop` does under [`Capture::ProfilerApi`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeEnd {
    /// The first stop ends collection for good.
    Stop,
    /// Every start opens a new window.
    Repeat,
}

/// How kernels launched from CUDA graphs are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphTrace {
    /// One record per graph launch.
    Graph,
    /// One record per kernel node, with its graph and node ids.
    Node,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CollectorOptions {
    /// Where each process writes `<pid>.lumen`.
    pub dir: PathBuf,
    pub capture: Capture,
    pub range_end: RangeEnd,
    pub graph_trace: GraphTrace,
    /// Kernels, copies, sets and synchronisation (`-t cuda`).
    pub cuda: bool,
    /// NVTX ranges and marks (`-t nvtx`).
    pub nvtx: bool,
    /// Runtime and driver API calls (`-t api`).
    pub api: bool,
}

impl CollectorOptions {
    pub fn to_env(&self) -> Vec<(String, String)> {
        let capture = match self.capture {
            Capture::Everything => "none",
            Capture::ProfilerApi => "cudaProfilerApi",
        };
        let range_end = match self.range_end {
            RangeEnd::Stop => "stop",
            RangeEnd::Repeat => "repeat",
        };
        let graph = match self.graph_trace {
            GraphTrace::Graph => "graph",
            GraphTrace::Node => "node",
        };
        let trace: Vec<&str> =
            [(self.cuda, "cuda"), (self.nvtx, "nvtx"), (self.api, "api")].iter().filter(|(on, _)| *on).map(|(_, n)| *n).collect();
        vec![
            (ENV_DIR.into(), self.dir.display().to_string()),
            (ENV_CAPTURE.into(), capture.into()),
            (ENV_RANGE_END.into(), range_end.into()),
            (ENV_GRAPH.into(), graph.into()),
            (ENV_TRACE.into(), trace.join(",")),
        ]
    }

    /// Reads the options through `get` (the environment, in the injected process).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let dir = get(ENV_DIR).with_context(|| format!("{ENV_DIR} is not set; the collector is started by `lumen profile`"))?;
        let value = |key: &str, default: &str| get(key).unwrap_or_else(|| default.to_string());
        let capture = match value(ENV_CAPTURE, "none").as_str() {
            "none" => Capture::Everything,
            "cudaProfilerApi" => Capture::ProfilerApi,
            other => bail!("{ENV_CAPTURE}={other:?}: expected none or cudaProfilerApi"),
        };
        let range_end = match value(ENV_RANGE_END, "stop").as_str() {
            "stop" => RangeEnd::Stop,
            "repeat" => RangeEnd::Repeat,
            other => bail!("{ENV_RANGE_END}={other:?}: expected stop or repeat"),
        };
        let graph_trace = match value(ENV_GRAPH, "graph").as_str() {
            "graph" => GraphTrace::Graph,
            "node" => GraphTrace::Node,
            other => bail!("{ENV_GRAPH}={other:?}: expected graph or node"),
        };
        let (mut cuda, mut nvtx, mut api) = (false, false, false);
        for t in value(ENV_TRACE, "cuda,nvtx,api").split(',').filter(|t| !t.is_empty()) {
            match t {
                "cuda" => cuda = true,
                "nvtx" => nvtx = true,
                "api" => api = true,
                other => bail!("{ENV_TRACE}: unknown kind {other:?}: expected cuda, nvtx or api"),
            }
        }
        Ok(CollectorOptions { dir: PathBuf::from(dir), capture, range_end, graph_trace, cuda, nvtx, api })
    }

    pub fn from_env() -> Result<Self> {
        Self::from_vars(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn options_survive_the_environment() {
        let o = CollectorOptions {
            dir: "/tmp/x".into(),
            capture: Capture::ProfilerApi,
            range_end: RangeEnd::Repeat,
            graph_trace: GraphTrace::Node,
            cuda: true,
            nvtx: false,
            api: true,
        };
        let env: HashMap<String, String> = o.to_env().into_iter().collect();
        assert_eq!(CollectorOptions::from_vars(|k| env.get(k).cloned()).unwrap(), o);
    }

    #[test]
    fn defaults_and_bad_values() {
        let only_dir = |k: &str| (k == ENV_DIR).then(|| "/d".to_string());
        let o = CollectorOptions::from_vars(only_dir).unwrap();
        assert_eq!(
            (o.capture, o.range_end, o.graph_trace, o.cuda, o.nvtx, o.api),
            (Capture::Everything, RangeEnd::Stop, GraphTrace::Graph, true, true, true)
        );
        let e = CollectorOptions::from_vars(|_| None).unwrap_err().to_string();
        assert!(e.contains(ENV_DIR), "{e}");
        let bad = |k: &str| match k {
            ENV_DIR => Some("/d".to_string()),
            ENV_TRACE => Some("cuda,osrt".to_string()),
            _ => None,
        };
        let e = CollectorOptions::from_vars(bad).unwrap_err().to_string();
        assert!(e.contains("osrt"), "{e}");
    }
}
