//! Hugging Face model directories: `config.json`, one or many `*.safetensors` shards (f32, f16,
//! bf16, FP8 E4M3, and the raw bytes of packed formats such as MXFP4's), `tokenizer.json` and the
//! chat template from `tokenizer_config.json`.

use anyhow::{bail, ensure, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

struct Entry {
    shard: usize,
    dtype: String,
    shape: Vec<usize>,
    start: usize,
    end: usize,
}

/// All tensors of a directory's shards, memory-mapped.
pub struct SafetensorsDir {
    shards: Vec<(PathBuf, Mmap)>,
    entries: HashMap<String, Entry>,
}

impl SafetensorsDir {
    pub fn open(dir: &Path) -> Result<Self> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read model directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .collect();
        files.sort();
        ensure!(!files.is_empty(), "{}: no *.safetensors files in this model directory", dir.display());
        let mut shards = Vec::new();
        let mut entries = HashMap::new();
        for (index, path) in files.into_iter().enumerate() {
            let file = std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            // SAFETY: read-only map of a weights file that lumen never writes.
            let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
            ensure!(map.len() >= 8, "{}: truncated safetensors file ({} bytes)", path.display(), map.len());
            let header_len = u64::from_le_bytes(map[..8].try_into().unwrap()) as usize;
            ensure!(
                header_len <= map.len() - 8,
                "{}: safetensors header claims {header_len} bytes, the file has {}",
                path.display(),
                map.len()
            );
            let header: HashMap<String, Value> = serde_json::from_slice(&map[8..8 + header_len])
                .with_context(|| format!("{}: safetensors header is not a JSON object", path.display()))?;
            let data_start = 8 + header_len;
            for (name, info) in header {
                if name == "__metadata__" {
                    continue;
                }
                let dtype = info["dtype"].as_str().with_context(|| format!("{}: tensor {name} has no dtype", path.display()))?;
                let shape: Vec<usize> = info["shape"]
                    .as_array()
                    .with_context(|| format!("{}: tensor {name} has no shape", path.display()))?
                    .iter()
                    .map(|d| d.as_u64().map(|d| d as usize))
                    .collect::<Option<_>>()
                    .with_context(|| format!("{}: tensor {name} has a non-integer dimension", path.display()))?;
                let offsets = info["data_offsets"].as_array().filter(|a| a.len() == 2);
                let (Some(s), Some(e)) = (offsets.and_then(|a| a[0].as_u64()), offsets.and_then(|a| a[1].as_u64())) else {
                    bail!("{}: tensor {name} has no valid data_offsets", path.display());
                };
                let (start, end) = (data_start + s as usize, data_start + e as usize);
                ensure!(
                    start <= end && end <= map.len(),
                    "{}: truncated: tensor {name} needs bytes {start}..{end}, the file has {}",
                    path.display(),
                    map.len()
                );
                entries.insert(name, Entry { shard: index, dtype: dtype.to_string(), shape, start, end });
            }
            shards.push((path, map));
        }
        Ok(SafetensorsDir { shards, entries })
    }

    /// The tensor as f32 with its shape, converting from f32, f16, bf16 or FP8 E4M3 (its codes'
    /// values, before any `weight_scale`).
    pub fn get(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (path, e) = self.entry(name)?;
        let values = to_f32(path, name, &e.dtype, &e.shape, &self.shards[e.shard].1[e.start..e.end])?;
        Ok((e.shape.clone(), values))
    }

    /// Slice `index` of the tensor along its first dimension, as f32, with the slice's shape:
    /// one expert of a tensor that stacks every expert's weight.
    pub fn get_slice(&self, name: &str, index: usize) -> Result<(Vec<usize>, Vec<f32>)> {
        let (path, e) = self.entry(name)?;
        let (bytes, shape) = slice_bytes(path, name, e, &self.shards[e.shard].1, index)?;
        let values = to_f32(path, name, &e.dtype, &shape, bytes)?;
        Ok((shape, values))
    }

    /// Slice `index` along the first dimension of a `U8` tensor (packed data such as MXFP4's
    /// blocks and scales), as bytes, with the slice's shape.
    pub fn get_bytes_slice(&self, name: &str, index: usize) -> Result<(Vec<usize>, &[u8])> {
        let (path, e) = self.entry(name)?;
        ensure!(e.dtype == "U8", "{}: tensor {name} has dtype {}, expected U8", path.display(), e.dtype);
        let (bytes, shape) = slice_bytes(path, name, e, &self.shards[e.shard].1, index)?;
        Ok((shape, bytes))
    }

    /// The stored shape of a tensor.
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.entries.get(name).map(|e| e.shape.as_slice())
    }

    fn entry(&self, name: &str) -> Result<(&Path, &Entry)> {
        let e = self.entries.get(name).with_context(|| format!("tensor {name} is missing from the safetensors shards"))?;
        Ok((&self.shards[e.shard].0, e))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The stored dtype of a tensor (`F32`, `BF16`, `F8_E4M3`, ...).
    pub fn dtype(&self, name: &str) -> Option<&str> {
        self.entries.get(name).map(|e| e.dtype.as_str())
    }
}

/// The bytes and shape of slice `index` along the first dimension of tensor `e`.
fn slice_bytes<'m>(path: &Path, name: &str, e: &Entry, map: &'m [u8], index: usize) -> Result<(&'m [u8], Vec<usize>)> {
    let first = e.shape.first().copied().unwrap_or(0);
    ensure!(index < first, "{}: tensor {name} of shape {:?} has no slice {index}", path.display(), e.shape);
    let len = (e.end - e.start) / first;
    ensure!(len * first == e.end - e.start, "{}: tensor {name} of shape {:?} does not split into {first} slices", path.display(), e.shape);
    let start = e.start + index * len;
    Ok((&map[start..start + len], e.shape[1..].to_vec()))
}

/// `bytes` of a tensor of `dtype` and `shape` as f32.
fn to_f32(path: &Path, name: &str, dtype: &str, shape: &[usize], bytes: &[u8]) -> Result<Vec<f32>> {
    let n: usize = shape.iter().product();
    let width = match dtype {
        "F32" => 4,
        "F16" | "BF16" => 2,
        "F8_E4M3" => 1,
        other => bail!("{}: tensor {name} has dtype {other}, expected F32, F16, BF16 or F8_E4M3", path.display()),
    };
    ensure!(bytes.len() == n * width, "{}: tensor {name} has {} bytes for shape {shape:?} of {dtype}", path.display(), bytes.len());
    Ok(match dtype {
        "F32" => bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect(),
        "F16" => bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
        "F8_E4M3" => bytes.iter().map(|&code| lumen_backend::fp8::from_e4m3(code)).collect(),
        _ => bytes.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
    })
}
