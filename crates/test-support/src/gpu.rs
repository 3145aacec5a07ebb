//! Whether a GPU test runs, is skipped, or fails.
//!
//! Without a GPU a GPU test prints `skipped: <why>` and passes, so CI on a machine without one
//! stays green. With `LUMEN_REQUIRE_GPU=1` (set by `scripts/gpu_tests.sh`) the same situation is
//! a failure, so a GPU machine whose device cannot be opened does not pass silently.

/// The variable that turns every GPU skip into a failure.
pub const REQUIRE_GPU: &str = "LUMEN_REQUIRE_GPU";

/// Whether `LUMEN_REQUIRE_GPU` asks for a GPU (any value but empty and `0`).
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Reports that a GPU test cannot run because of `why`: panics when a GPU is required,
/// otherwise prints `skipped: <why>` for the caller to return.
pub fn skip(why: &str) {
    if gpu_required() {
        panic!("{REQUIRE_GPU} is set but the test cannot run: {why}");
    }
    eprintln!("skipped: {why}");
}

/// `Ok(t)` passes `t` through; `Err(e)` is reported through [`skip`] as "no CUDA device (e)", with
/// `e`'s causes when it has them (`{e:#}`).
pub fn device_or_skip<T, E: std::fmt::Display>(opened: Result<T, E>) -> Option<T> {
    match opened {
        Ok(t) => Some(t),
        Err(e) => {
            skip(&format!("no CUDA device ({e:#})"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_gpu_turns_a_skip_into_a_panic() {
        // One test covers both states so that no other test sees the variable change.
        std::env::remove_var(REQUIRE_GPU);
        assert_eq!(device_or_skip::<u8, &str>(Err("none")), None);
        assert_eq!(device_or_skip::<u8, &str>(Ok(3)), Some(3));
        std::env::set_var(REQUIRE_GPU, "1");
        let caught = std::panic::catch_unwind(|| device_or_skip::<u8, &str>(Err("cuInit failed")));
        std::env::set_var(REQUIRE_GPU, "0");
        assert!(!gpu_required());
        std::env::remove_var(REQUIRE_GPU);
        let message = caught.expect_err("a required GPU must fail the test");
        let text = message.downcast_ref::<String>().expect("a formatted message");
        assert!(text.contains("LUMEN_REQUIRE_GPU") && text.contains("cuInit failed"), "{text}");
    }
}
