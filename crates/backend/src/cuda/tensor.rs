//! Typed device tensors: a device address with its element type and `[rows, cols]` shape
//! ([`Tensor`], a view), and a tensor that owns its memory ([`DeviceTensor`]). Matrix products take
//! these instead of raw pointers and flags, so the kernel is chosen from the operand types.

use super::device::DeviceBuffer;
use std::fmt;

/// Element type of a device tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    Bf16,
    /// FP8 E4M3 (OCP "FN": no infinities, largest finite 448), scaled: a value is its code times
    /// the tensor's one f32 scale.
    Fp8E4M3,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::Bf16 => 2,
            DType::Fp8E4M3 => 1,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::Bf16 => "bf16",
            DType::Fp8E4M3 => "fp8e4m3",
        })
    }
}

/// A row-major `[rows, cols]` view of device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tensor {
    pub ptr: u64,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// Device address of the f32 scale of an FP8 tensor; 0 for other types.
    pub scale: u64,
}

impl fmt::Display for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}[{}, {}]", self.dtype, self.rows, self.cols)
    }
}

impl DeviceBuffer {
    /// The first `rows × cols` elements of this buffer as a tensor of `dtype`.
    pub fn tensor(&self, dtype: DType, rows: usize, cols: usize) -> Tensor {
        debug_assert!(rows * cols * dtype.size() <= self.bytes, "a {dtype}[{rows}, {cols}] view of a {}-byte buffer", self.bytes);
        Tensor { ptr: self.ptr, dtype, rows, cols, scale: 0 }
    }
}

/// A tensor that owns its device memory (a model weight).
pub struct DeviceTensor {
    pub buffer: DeviceBuffer,
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    /// The f32 scale of an FP8 tensor.
    pub scale: Option<DeviceBuffer>,
}

impl DeviceTensor {
    pub fn view(&self) -> Tensor {
        let scale = self.scale.as_ref().map_or(0, |s| s.ptr);
        Tensor { ptr: self.buffer.ptr, dtype: self.dtype, rows: self.rows, cols: self.cols, scale }
    }

    pub fn ptr(&self) -> u64 {
        self.buffer.ptr
    }
}
