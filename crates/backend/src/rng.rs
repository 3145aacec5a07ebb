//! splitmix64, the one pseudo-random mixer lumen uses: preset weights are drawn from it and the
//! samplers draw their uniforms from it, so a seed gives the same numbers everywhere. Its twins
//! in other languages must stay equal to it: `splitmix64` in `cuda/kernels/sampling.cu` (the GPU
//! sampler) and in `scripts/reference_logits.py` (the preset weights of the numpy reference).

/// One splitmix64 step: a well-mixed 64-bit value of `x`.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    #[test]
    fn splitmix64_gives_the_published_sequence() {
        // The first outputs of the reference generator seeded with 0 (state advanced by the
        // golden gamma before each mix).
        let outputs: Vec<u64> = (1..=3u64).map(|i| super::splitmix64(0x9E3779B97F4A7C15u64.wrapping_mul(i - 1))).collect();
        assert_eq!(outputs, [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]);
    }
}
