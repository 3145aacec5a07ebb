//! FP8 E4M3 on the host, as the CUDA kernels compute it: codes of the OCP "FN" format (sign, 4
//! exponent bits biased by 7, 3 mantissa bits; no infinities; 0x7f and 0xff are NaN; largest
//! finite 448), rounding to nearest even and saturating at ±448, with one f32 scale per tensor (a
//! weight) or per row (a product's activations, one scale a token): the power of two at or above
//! `amax / 448`. A power of two divides exactly, and values whose amax differs in the last bits
//! (another device's rounding) keep their scale and so every code; the price is at most one bit of
//! headroom below 448. The CPU backend runs FP8 models through these: the reference the CUDA FP8
//! path is checked against.

/// Largest finite E4M3 value.
pub const E4M3_MAX: f32 = 448.0;

/// The E4M3 code of `x`, rounded to nearest even and saturated at ±448; NaN gives 0x7f.
pub fn to_e4m3(x: f32) -> u8 {
    if x.is_nan() {
        return 0x7f;
    }
    let sign = if x.is_sign_negative() { 0x80 } else { 0 };
    let a = (x as f64).abs();
    if a >= E4M3_MAX as f64 {
        return sign | 0x7e;
    }
    // Exponent of the binade, at least the smallest normal's (-6): below it the step stays 2^-9.
    let exponent = if a == 0.0 { -6 } else { ((((a.to_bits() >> 52) & 0x7ff) as i32) - 1023).max(-6) };
    let steps = (a / f64::powi(2.0, exponent - 3)).round_ties_even() as i32;
    // steps lies in [8, 16] for a normal (16 carries into the next binade) and [0, 8] below.
    sign | (((exponent + 7) << 3) + steps - 8) as u8
}

/// The value of E4M3 code `code`.
pub fn from_e4m3(code: u8) -> f32 {
    let sign = if code & 0x80 != 0 { -1.0 } else { 1.0 };
    let (exponent, mantissa) = (((code >> 3) & 0xf) as i32, (code & 7) as f32);
    if exponent == 0xf && mantissa == 7.0 {
        return f32::NAN;
    }
    let magnitude = if exponent == 0 { mantissa * f32::powi(2.0, -9) } else { (1.0 + mantissa / 8.0) * f32::powi(2.0, exponent - 7) };
    sign * magnitude
}

/// The scale of a tensor whose largest magnitude is `amax`: the power of two at or above
/// `amax / 448` (that quotient rounded to f32 first), or 1 for an all-zero tensor.
pub fn scale_for(amax: f32) -> f32 {
    if amax > 0.0 {
        f32::from_bits(((amax / E4M3_MAX).to_bits() + 0x007f_ffff) & 0xff80_0000)
    } else {
        1.0
    }
}

/// Replaces every value by what its FP8 code with one per-tensor scale represents (`code(x /
/// scale) · scale`), and returns the scale.
pub fn fake_quantize(values: &mut [f32]) -> f32 {
    let amax = values.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = scale_for(amax);
    for v in values.iter_mut() {
        *v = from_e4m3(to_e4m3(*v / scale)) * scale;
    }
    scale
}

/// [`fake_quantize`] of each row of `cols` values on its own (a product's activations: one scale a
/// token); returns the rows' scales.
pub fn fake_quantize_rows(values: &mut [f32], cols: usize) -> Vec<f32> {
    values.chunks_mut(cols.max(1)).map(fake_quantize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_and_known_values_encode() {
        for code in 0..=255u8 {
            let value = from_e4m3(code);
            if code & 0x7f == 0x7f {
                assert!(value.is_nan());
            } else if code != 0x80 {
                assert_eq!(to_e4m3(value), code, "code {code:#04x} = {value}");
            }
        }
        for (x, code) in [(1.0, 0x38), (448.0, 0x7e), (-1.5, 0xbc), (0.001953125, 0x01), (0.015625, 0x08), (0.0, 0x00)] {
            assert_eq!(to_e4m3(x), code, "{x}");
        }
        assert_eq!((from_e4m3(0x7e), from_e4m3(0x01), from_e4m3(0x38)), (448.0, 0.001953125, 1.0));
    }

    #[test]
    fn rounding_is_to_nearest_even_and_saturates() {
        // Between 1 (0x38) and 1.125 (0x39) the midpoint goes to the even code; past it, up.
        assert_eq!((to_e4m3(1.0625), to_e4m3(1.0626), to_e4m3(1.1875)), (0x38, 0x39, 0x3a));
        // Between 2^-9 (0x01) and 2^-8 (0x02) in the subnormals: 1.5 * 2^-9 ties to 0x02.
        assert_eq!(to_e4m3(1.5 * 0.001953125), 0x02);
        // Carry into the next binade: 1.9375 is the midpoint of 1.875 and 2; 2 is even.
        assert_eq!(to_e4m3(1.9375), 0x40);
        assert_eq!((to_e4m3(460.0), to_e4m3(1e30), to_e4m3(f32::INFINITY), to_e4m3(-1e30)), (0x7e, 0x7e, 0x7e, 0xfe));
        assert_eq!(to_e4m3(f32::NAN), 0x7f);
        assert_eq!(to_e4m3(1e-9), 0x00, "below half the smallest subnormal");
    }

    #[test]
    fn scales_are_the_power_of_two_at_or_above_amax_over_448() {
        assert_eq!((scale_for(448.0), scale_for(449.0), scale_for(224.0), scale_for(0.0)), (1.0, 2.0, 0.5, 1.0));
        assert_eq!(scale_for(3.0), 1.0 / 128.0);
        assert_eq!(scale_for(1e-30), f32::powi(2.0, -108));
    }

    #[test]
    fn fake_quantization_keeps_the_largest_value_and_a_relative_error_under_an_eighth() {
        let mut values: Vec<f32> = (0..1000).map(|i| ((i as f32) * 0.37).sin() * 3.0).collect();
        let original = values.clone();
        let scale = fake_quantize(&mut values);
        let amax = original.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert_eq!(scale, 1.0 / 128.0, "3 / 448 rounds up to 2^-7");
        assert!(amax / scale <= 448.0 && amax / scale > 224.0);
        for (q, x) in values.iter().zip(&original) {
            // Normal codes are within half a step (1/16 relative); subnormal ones within 2^-10 · scale.
            assert!((q - x).abs() <= x.abs() / 16.0 + scale * 0.0009765625 + 1e-7, "{x} became {q}");
        }
        let mut zeros = vec![0.0f32; 4];
        assert_eq!(fake_quantize(&mut zeros), 1.0);
        assert_eq!(zeros, [0.0; 4]);
    }

    #[test]
    fn rows_are_quantized_each_with_its_own_scale() {
        // A row of small values beside a row of large ones keeps its own resolution.
        let original = vec![0.01f32, -0.02, 0.03, 0.015, 100.0, -200.0, 300.0, 50.0];
        let mut values = original.clone();
        let scales = fake_quantize_rows(&mut values, 4);
        assert_eq!(scales, [scale_for(0.03), scale_for(300.0)]);
        let (mut small, mut large, mut whole) = (original[..4].to_vec(), original[4..].to_vec(), original.clone());
        fake_quantize(&mut small);
        fake_quantize(&mut large);
        assert_eq!((&values[..4], &values[4..]), (&small[..], &large[..]), "each row as if alone");
        fake_quantize(&mut whole);
        assert_ne!(whole[..4], values[..4], "one scale for both rows leaves the small one on subnormal steps");
    }
}
