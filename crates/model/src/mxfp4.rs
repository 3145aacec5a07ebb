//! MXFP4 (OCP Microscaling): blocks of 32 FP4 E2M1 values sharing one E8M0 scale, as GPT-OSS
//! checkpoints store their experts. Each row of `cols` values is `cols / 32` blocks of 16 bytes
//! (two codes a byte, the low nibble first) and as many scale bytes. Dequantizing is exact: every
//! E2M1 value times a power of two is an f32, unless it exceeds f32's range (a value of 2 or more
//! under the largest scales), which is refused.

use anyhow::{ensure, Result};

/// The values of the 16 FP4 E2M1 codes: sign bit, two exponent bits, one mantissa bit.
const E2M1: [f32; 16] = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0];

/// Values per block.
pub const BLOCK: usize = 32;

/// The `[rows, cols]` values of MXFP4 `blocks` (`rows · cols / 2` bytes) and `scales`
/// (`rows · cols / 32` bytes). An E8M0 scale byte `s` is `2^(s − 127)`; 255 is NaN and refused.
pub fn dequantize(blocks: &[u8], scales: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>> {
    ensure!(cols.is_multiple_of(BLOCK), "MXFP4 rows of {cols} values do not split into blocks of {BLOCK}");
    ensure!(
        blocks.len() == rows * cols / 2 && scales.len() == rows * cols / BLOCK,
        "MXFP4 data of {rows}×{cols} values needs {} block bytes and {} scale bytes, found {} and {}",
        rows * cols / 2,
        rows * cols / BLOCK,
        blocks.len(),
        scales.len()
    );
    ensure!(!scales.contains(&255), "an MXFP4 scale is 255, which E8M0 defines as NaN");
    let mut out = Vec::with_capacity(rows * cols);
    for (block, &scale) in blocks.chunks(BLOCK / 2).zip(scales) {
        let factor = 2f64.powi(scale as i32 - 127);
        for code in block.iter().flat_map(|&byte| [byte & 0x0f, byte >> 4]) {
            let value = (E2M1[code as usize] as f64 * factor) as f32;
            ensure!(
                value.is_finite(),
                "an MXFP4 value {} under scale byte {scale} (2^{}) exceeds the range of f32",
                E2M1[code as usize],
                scale as i32 - 127
            );
            out.push(value);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_scales_follow_the_format() {
        // Row 0: scale 2^(128-127) = 2; first byte 0x71: low nibble 1 (0.5), high nibble 7 (6).
        // Row 1: scale 2^(120-127) = 1/128; first byte 0xf9: low nibble 9 (−0.5), high 15 (−6).
        let mut blocks = vec![0u8; 32];
        blocks[0] = 0x71;
        blocks[16] = 0xf9;
        blocks[31] = 0x2c;
        let v = dequantize(&blocks, &[128, 120], 2, 32).unwrap();
        assert_eq!(&v[..3], &[1.0, 12.0, 0.0]);
        assert_eq!(&v[32..34], &[-0.5 / 128.0, -6.0 / 128.0]);
        assert_eq!(&v[62..], &[-2.0 / 128.0, 1.0 / 128.0], "byte 0x2c: low nibble 12 (−2), high 2 (1)");
        assert_eq!(dequantize(&[0x11; 16], &[0], 1, 32).unwrap()[0], 0.5 * 2f32.powi(-127), "the smallest scale is exact");
        let e = dequantize(&blocks, &[128, 255], 2, 32).unwrap_err().to_string();
        assert!(e.contains("255") && e.contains("NaN"), "{e}");
        assert_eq!(dequantize(&[0x33; 16], &[254], 1, 32).unwrap()[0], 1.5 * 2f32.powi(127), "the largest scale, in range");
        let e = dequantize(&[0x44; 16], &[254], 1, 32).unwrap_err().to_string();
        assert!(e.contains("2 under scale byte 254") && e.contains("range of f32"), "{e}");
        let e = dequantize(&blocks, &[128], 2, 32).unwrap_err().to_string();
        assert!(e.contains("needs 32 block bytes and 2 scale bytes, found 32 and 1"), "{e}");
    }
}
