//! GGUF v3 files: header, metadata, tensor directory, and dequantisation to f32 of the tensor
//! types lumen loads (F32, F16, BF16, Q8_0, Q4_0, Q4_1). Every structural problem is reported with
//! the file name and the byte offset or field at fault.

use anyhow::{bail, ensure, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// One metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            MetaValue::Int(v) if *v >= 0 => Some(*v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            MetaValue::Float(v) => Some(*v),
            MetaValue::Int(v) => Some(*v as f64),
            _ => None,
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            MetaValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them: innermost first (`[in, out]` for a linear weight).
    pub dims: Vec<u64>,
    pub kind: u32,
    offset: u64,
}

impl TensorInfo {
    /// The number of elements, or `None` when the dimensions' product overflows.
    pub fn num_elements(&self) -> Option<usize> {
        self.dims.iter().try_fold(1usize, |n, &d| n.checked_mul(usize::try_from(d).ok()?))
    }
}

pub struct GgufFile {
    pub path: PathBuf,
    pub metadata: HashMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    data_start: usize,
    map: Mmap,
}

struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            bail!(
                "{}: truncated GGUF: {what} needs {n} bytes at offset {}, the file has {}",
                self.path.display(),
                self.pos,
                self.bytes.len()
            );
        };
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.u64(what)?;
        ensure!(n < 1 << 30, "{}: GGUF {what} claims a string of {n} bytes at offset {}", self.path.display(), self.pos);
        let b = self.take(n as usize, what)?;
        Ok(String::from_utf8_lossy(b).into_owned())
    }
    fn value(&mut self, kind: u32, key: &str) -> Result<MetaValue> {
        Ok(match kind {
            0 => MetaValue::Int(self.take(1, key)?[0] as i64),
            1 => MetaValue::Int(self.take(1, key)?[0] as i8 as i64),
            2 => MetaValue::Int(u16::from_le_bytes(self.take(2, key)?.try_into().unwrap()) as i64),
            3 => MetaValue::Int(i16::from_le_bytes(self.take(2, key)?.try_into().unwrap()) as i64),
            4 => MetaValue::Int(self.u32(key)? as i64),
            5 => MetaValue::Int(self.u32(key)? as i32 as i64),
            6 => MetaValue::Float(f32::from_le_bytes(self.take(4, key)?.try_into().unwrap()) as f64),
            7 => MetaValue::Bool(self.take(1, key)?[0] != 0),
            8 => MetaValue::Str(self.string(key)?),
            9 => {
                let elem = self.u32(key)?;
                let n = self.u64(key)?;
                ensure!(n < 1 << 28, "{}: GGUF key {key} claims an array of {n} elements", self.path.display());
                let mut items = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    items.push(self.value(elem, key)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::Int(self.u64(key)? as i64),
            11 => MetaValue::Int(self.u64(key)? as i64),
            12 => MetaValue::Float(f64::from_le_bytes(self.take(8, key)?.try_into().unwrap())),
            other => bail!("{}: GGUF key {key} has unknown value type {other}", self.path.display()),
        })
    }
}

/// Bytes per block and elements per block of a GGUF tensor type.
fn block_layout(kind: u32) -> Option<(usize, usize, &'static str)> {
    Some(match kind {
        0 => (4, 1, "F32"),
        1 => (2, 1, "F16"),
        2 => (18, 32, "Q4_0"),
        3 => (20, 32, "Q4_1"),
        8 => (34, 32, "Q8_0"),
        30 => (2, 1, "BF16"),
        _ => return None,
    })
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open model file {}", path.display()))?;
        // SAFETY: the map is read-only and lumen does not modify model files while they are open.
        let map = unsafe { Mmap::map(&file) }.with_context(|| format!("cannot map {}", path.display()))?;
        let mut c = Cursor { bytes: &map, pos: 0, path };
        let magic = c.take(4, "magic")?;
        ensure!(magic == b"GGUF", "{}: not a GGUF file (magic {:?}, expected \"GGUF\")", path.display(), String::from_utf8_lossy(magic));
        let version = c.u32("version")?;
        ensure!(version == 3, "{}: GGUF version {version} is not supported, expected 3", path.display());
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        ensure!(n_tensors < 1 << 20 && n_kv < 1 << 20, "{}: implausible GGUF header ({n_tensors} tensors, {n_kv} keys)", path.display());
        let mut metadata = HashMap::new();
        for _ in 0..n_kv {
            let key = c.string("metadata key")?;
            let kind = c.u32(&key)?;
            let value = c.value(kind, &key)?;
            metadata.insert(key, value);
        }
        let mut tensors = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = c.string("tensor name")?;
            let n_dims = c.u32(&name)?;
            ensure!(n_dims <= 4, "{}: tensor {name} has {n_dims} dimensions, expected at most 4", path.display());
            let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<_>>>()?;
            let kind = c.u32(&name)?;
            let offset = c.u64(&name)?;
            tensors.push(TensorInfo { name, dims, kind, offset });
        }
        let alignment = metadata.get("general.alignment").and_then(MetaValue::as_u64).unwrap_or(32);
        ensure!(
            alignment.is_power_of_two() && alignment <= 1 << 20,
            "{}: general.alignment is {alignment}; expected a power of two (32 by default)",
            path.display()
        );
        if let Some(t) = tensors.iter().find(|t| t.offset % alignment != 0) {
            bail!("{}: tensor {} starts at offset {}, not a multiple of the alignment {alignment}", path.display(), t.name, t.offset);
        }
        let alignment = alignment as usize;
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let gguf = GgufFile { path: path.to_path_buf(), metadata, tensors, data_start, map };
        for t in &gguf.tensors {
            gguf.tensor_bytes(t)?;
        }
        Ok(gguf)
    }

    pub fn meta(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    pub fn meta_str(&self, key: &str) -> Result<&str> {
        self.meta(key)
            .and_then(MetaValue::as_str)
            .with_context(|| format!("{}: metadata {key} is missing or not a string", self.path.display()))
    }

    pub fn meta_u64(&self, key: &str) -> Result<u64> {
        self.meta(key)
            .and_then(MetaValue::as_u64)
            .with_context(|| format!("{}: metadata {key} is missing or not an integer", self.path.display()))
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensor's bytes in the file and its number of elements.
    fn tensor_bytes(&self, t: &TensorInfo) -> Result<(&[u8], usize)> {
        let Some((block_bytes, block_elems, type_name)) = block_layout(t.kind) else {
            bail!(
                "{}: tensor {} has GGUF type {}, which lumen cannot load (F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                self.path.display(),
                t.name,
                t.kind
            );
        };
        let n = t
            .num_elements()
            .with_context(|| format!("{}: tensor {} has dimensions {:?}, whose product overflows", self.path.display(), t.name, t.dims))?;
        ensure!(
            n % block_elems == 0,
            "{}: tensor {} ({type_name}) has {n} elements, not a multiple of its block of {block_elems}",
            self.path.display(),
            t.name
        );
        let len = (n / block_elems).checked_mul(block_bytes);
        let start = usize::try_from(t.offset).ok().and_then(|o| self.data_start.checked_add(o));
        let (Some(len), Some(start)) = (len, start) else {
            bail!("{}: tensor {} claims {n} elements at offset {}, beyond any file", self.path.display(), t.name, t.offset);
        };
        let end = start.saturating_add(len);
        ensure!(
            end <= self.map.len(),
            "{}: truncated GGUF: tensor {} needs bytes {start}..{end}, the file has {}",
            self.path.display(),
            t.name,
            self.map.len()
        );
        Ok((&self.map[start..end], n))
    }

    /// The tensor's values as f32, in GGUF's row-major order (innermost dimension fastest).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        let (bytes, n) = self.tensor_bytes(t)?;
        let mut out = vec![0.0f32; n];
        let h = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32();
        match t.kind {
            0 => out.iter_mut().zip(bytes.chunks_exact(4)).for_each(|(o, b)| *o = f32::from_le_bytes(b.try_into().unwrap())),
            1 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = h(b)),
            30 => out.iter_mut().zip(bytes.chunks_exact(2)).for_each(|(o, b)| *o = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
            2 => {
                for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                    let d = h(b);
                    for j in 0..16 {
                        o[j] = ((b[2 + j] & 0x0F) as i32 - 8) as f32 * d;
                        o[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                    }
                }
            }
            3 => {
                for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                    let (d, m) = (h(&b[0..2]), h(&b[2..4]));
                    for j in 0..16 {
                        o[j] = (b[4 + j] & 0x0F) as f32 * d + m;
                        o[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                    }
                }
            }
            8 => {
                for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                    let d = h(b);
                    for j in 0..32 {
                        o[j] = b[2 + j] as i8 as f32 * d;
                    }
                }
            }
            _ => unreachable!("tensor_bytes accepted only loadable types"),
        }
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a GGUF v3 file in memory: string metadata, then tensors given as (name, dims, type, bytes).
    pub fn build(meta: &[(&str, &str)], tensors: &[(&str, Vec<u64>, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = Vec::new();
        let s = |b: &mut Vec<u8>, x: &str| {
            b.extend((x.len() as u64).to_le_bytes());
            b.extend(x.as_bytes());
        };
        b.extend(b"GGUF");
        b.extend(3u32.to_le_bytes());
        b.extend((tensors.len() as u64).to_le_bytes());
        b.extend((meta.len() as u64).to_le_bytes());
        for (k, v) in meta {
            s(&mut b, k);
            b.extend(8u32.to_le_bytes());
            s(&mut b, v);
        }
        let mut offset = 0u64;
        for (name, dims, kind, bytes) in tensors {
            s(&mut b, name);
            b.extend((dims.len() as u32).to_le_bytes());
            dims.iter().for_each(|d| b.extend(d.to_le_bytes()));
            b.extend(kind.to_le_bytes());
            b.extend(offset.to_le_bytes());
            offset += (bytes.len() as u64).div_ceil(32) * 32;
        }
        while b.len() % 32 != 0 {
            b.push(0);
        }
        for (_, _, _, bytes) in tensors {
            b.extend(bytes);
            while b.len() % 32 != 0 {
                b.push(0);
            }
        }
        b
    }

    fn write(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("lumen-gguf-{}-{name}", std::process::id()));
        std::fs::write(&dir, bytes).unwrap();
        dir
    }

    #[test]
    fn dequantizes_q4_1_and_q8_0_blocks() {
        let mut q41 = Vec::new();
        q41.extend(f16::from_f32(0.5).to_le_bytes());
        q41.extend(f16::from_f32(-1.0).to_le_bytes());
        q41.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
        let mut q80 = Vec::new();
        q80.extend(f16::from_f32(0.25).to_le_bytes());
        q80.extend((0..32i8).map(|j| (j - 16) as u8));
        let bytes = build(&[("general.architecture", "llama")], &[("a", vec![32], 3, q41), ("b", vec![32], 8, q80)]);
        let path = write("quant", &bytes);
        let g = GgufFile::open(&path).unwrap();
        let a = g.dequantize(g.tensor("a").unwrap()).unwrap();
        assert_eq!(a[3], 3.0 * 0.5 - 1.0);
        assert_eq!(a[16 + 3], 12.0 * 0.5 - 1.0);
        let b = g.dequantize(g.tensor("b").unwrap()).unwrap();
        assert_eq!(b[0], -4.0);
        assert_eq!(b[31], 15.0 * 0.25);
        assert_eq!(g.meta_str("general.architecture").unwrap(), "llama");
    }

    #[test]
    fn wrong_magic_and_truncation_are_named() {
        let path = write("magic", b"GGML\x03\0\0\0");
        let e = GgufFile::open(&path).err().unwrap();
        assert!(format!("{e:#}").contains("not a GGUF file"), "{e:#}");
        let full = build(&[], &[("w", vec![64], 0, vec![0u8; 256])]);
        let path = write("trunc", &full[..full.len() - 100]);
        let e = GgufFile::open(&path).err().unwrap();
        assert!(format!("{e:#}").contains("truncated GGUF: tensor w"), "{e:#}");
        let path = write("short", &full[..20]);
        let e = GgufFile::open(&path).err().unwrap();
        assert!(format!("{e:#}").contains("truncated GGUF"), "{e:#}");
    }

    #[test]
    fn impossible_sizes_and_misaligned_offsets_are_errors_not_panics() {
        let huge = build(&[], &[("w", vec![(1 << 63) - 1], 0, vec![0u8; 32])]);
        let e = GgufFile::open(&write("huge", &huge)).err().unwrap();
        assert!(format!("{e:#}").contains("tensor w claims"), "{e:#}");
        let overflow = build(&[], &[("w", vec![1 << 40, 1 << 40], 0, vec![0u8; 32])]);
        let e = GgufFile::open(&write("overflow", &overflow)).err().unwrap();
        assert!(format!("{e:#}").contains("product overflows"), "{e:#}");
        let mut misaligned = build(&[], &[("a", vec![8], 0, vec![0u8; 32]), ("b", vec![8], 0, vec![0u8; 32])]);
        // The second tensor's offset field (the last 8 bytes before the padding of the header) is 32; make it 4.
        let at = misaligned.windows(8).rposition(|w| w == 32u64.to_le_bytes()).unwrap();
        misaligned[at..at + 8].copy_from_slice(&4u64.to_le_bytes());
        let e = GgufFile::open(&write("misaligned", &misaligned)).err().unwrap();
        assert!(format!("{e:#}").contains("tensor b starts at offset 4, not a multiple of the alignment 32"), "{e:#}");
    }
}
