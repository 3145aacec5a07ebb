//! lumen's scalar CUDA kernels run on the CPU, in CI, through a small emulation of the CUDA
//! thread model (`tests/emulated/emu.h`: blocks in turn, each block's threads as OS threads,
//! barriers for `__syncthreads`, the warp's and its shuffles). The kernel sources are the ones
//! NVRTC compiles, concatenated in the same order, with their inline PTX replaced by software:
//! the E4M3 conversions by the host's FP8 rule, and `mma.sync` and `ldmatrix` as warp-wide
//! operations on the fragment layouts of the PTX ISA (which the grouped expert GEMM, a kernel that
//! has run on the GPU, pins: it fails when they are wrong). Each check is a C++ program in `tests/emulated/`
//! that compares kernels against a reference written from their definition and exits non-zero on a
//! difference; it says what it measured. This checks a kernel's arithmetic and indexing (tiles,
//! KV splits, block tables, warp reductions) before a GPU is at hand; the GPU tests
//! (`scripts/gpu_tests.sh`) remain the check of the kernels as the hardware runs them.
//!
//! Needs a C++20 compiler (`c++`, `g++` or `clang++`; `scripts/setup.sh` installs g++); without
//! one each test says so and passes.

use lumen_backend::cuda::compile::SOURCES;
use std::path::{Path, PathBuf};
use std::process::Command;

fn compiler() -> Option<&'static str> {
    ["c++", "g++", "clang++"].into_iter().find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()))
}

/// The functions whose PTX the emulation replaces by its software ones (emu.h): the E4M3 and f16
/// conversions, the byte permute, dynamic shared memory (whose state-space addresses are offsets
/// into the emulation's one buffer) and asynchronous copies (landing when issued or when awaited,
/// [`Copies`]), and the warp-wide and
/// warp-group-wide tensor-core products and fragment loads; each one's signature, and its new
/// body.
const EMULATED_PTX: [(&str, &str); 22] = [
    ("u32 f32x2_to_e4m3x2(float hi, float lo)", "return emu_f32x2_to_e4m3x2(hi, lo);"),
    ("void e4m3x2_to_f32x2(unsigned short v, float& hi, float& lo)", "emu_e4m3x2_to_f32x2(v, hi, lo);"),
    ("u32 e4m3x2_to_f16x2(unsigned short v)", "return emu_e4m3x2_to_f16x2(v);"),
    ("u32 pack_f16x2(float lo, float hi)", "return emu_pack_f16x2(lo, hi);"),
    ("u32 pack_bf16x2(float lo, float hi)", "return (u32)f2bf(lo) | ((u32)f2bf(hi) << 16);"),
    ("float fast_exp2(float x)", "return exp2f(x);"),
    ("u32 byte_perm(u32 lo, u32 hi, u32 select)", "return emu_byte_perm(lo, hi, select);"),
    ("unsigned char* dynamic_shared()", "return emu_dynamic_shared;"),
    ("u32 shared_address(const void* p)", "return (u32)((const unsigned char*)p - emu_dynamic_shared);"),
    ("void cp_async16(void* smem, const void* gmem, bool valid)", "emu_cp_async16(smem, gmem, valid);"),
    ("void cp_async16_at(u32 smem, const void* gmem, bool valid)", "emu_cp_async16(emu_dynamic_shared + smem, gmem, valid);"),
    ("void cp_async_commit()", "emu_cp_async_commit();"),
    ("void cp_async_wait()", "emu_cp_async_wait(N);"),
    ("void mma_bf16_m16n8k16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1)", "emu_mma_bf16_m16n8k16(d, a, b0, b1);"),
    ("void mma_f16_m16n8k16(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1)", "emu_mma_f16_m16n8k16(d, a, b0, b1);"),
    ("void mma_e4m3_m16n8k32(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1)", "emu_mma_e4m3_m16n8k32(d, a, b0, b1);"),
    ("void ldmatrix_x4(u32 (&r)[4], const bf16* row)", "emu_ldmatrix_x4(r, row, false);"),
    ("void ldmatrix_x4_trans(u32 (&r)[4], const bf16* row)", "emu_ldmatrix_x4(r, row, true);"),
    ("void ldmatrix_x4_at(u32 (&r)[4], u32 addr)", "emu_ldmatrix_x4(r, (const bf16*)(emu_dynamic_shared + addr), false);"),
    ("void ldmatrix_x4_trans_at(u32 (&r)[4], u32 addr)", "emu_ldmatrix_x4(r, (const bf16*)(emu_dynamic_shared + addr), true);"),
    ("void wgmma_m64n64k16_ss(float (&d)[8][4], u64 a, u64 b, int accumulate)", "emu_wgmma_ss<F16>(d, a, b, accumulate);"),
    ("void wgmma_m64n128k16_rs(float (&d)[16][4], const u32 (&a)[4], u64 b)", "emu_wgmma_rs<F16>(d, a, b);"),
];

/// `src` with the body of the function whose signature is `signature` replaced by `body`.
fn replace_body(src: &str, signature: &str, body: &str) -> String {
    let at = src.find(signature).unwrap_or_else(|| panic!("the kernel sources no longer define {signature}"));
    let open = at + src[at..].find('{').expect("a function body");
    let mut depth = 0;
    let close = src[open..]
        .char_indices()
        .find_map(|(i, c)| {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            (depth == 0).then_some(open + i)
        })
        .expect("the body's closing brace");
    format!("{}{{ {body} }}{}", &src[..open], &src[close + 1..])
}

/// The kernel sources as one C++ file: the emulated PTX in software, any other inline PTX inert.
fn write_kernels(dir: &Path) {
    let mut all: String = SOURCES.iter().map(|(_, src)| format!("{src}\n")).collect();
    for (signature, body) in EMULATED_PTX {
        all = replace_body(&all, signature, body);
    }
    let all = all.replace("asm volatile(", "EMU_ASM(").replace("asm(", "EMU_ASM(");
    std::fs::write(dir.join("kernels.cu"), all).expect("writing the kernel sources");
}

/// When the emulation lands an asynchronous copy: when it is issued, the earliest the hardware
/// may (a copy into rows that other threads still read then spoils their values), or when its
/// thread waits for its group, the latest (a read of rows before the wait that makes them
/// visible then sees old bytes).
#[derive(Clone, Copy, Debug)]
enum Copies {
    WhenIssued,
    WhenAwaited,
}

/// Builds and runs the check `tests/emulated/{name}.cpp`, failing with its output when it fails.
fn run_check(name: &str) {
    run_check_with(name, &[Copies::WhenIssued]);
}

/// [`run_check`], once with each landing of the copies in `copies`.
fn run_check_with(name: &str, copies: &[Copies]) {
    let Some(cxx) = compiler() else {
        eprintln!("skipped: no C++ compiler (c++, g++ or clang++) to build the emulated kernels; scripts/setup.sh installs g++");
        return;
    };
    let emulated = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/emulated");
    let dir: PathBuf = std::env::temp_dir().join(format!("lumen-emulated-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    write_kernels(&dir);
    let binary = dir.join(name);
    let build = Command::new(cxx)
        .args(["-std=c++20", "-O2", "-pthread", "-I"])
        .arg(&dir)
        .arg("-I")
        .arg(&emulated)
        .arg(emulated.join(format!("{name}.cpp")))
        .arg("-o")
        .arg(&binary)
        .output()
        .expect("running the C++ compiler");
    assert!(build.status.success(), "{cxx} could not build the {name} check:\n{}", String::from_utf8_lossy(&build.stderr));
    let runs: Vec<_> = copies
        .iter()
        .map(|&landing| {
            // Set either way, so that the caller's environment does not choose for a run.
            let mode = match landing {
                Copies::WhenIssued => "issued",
                Copies::WhenAwaited => "late",
            };
            (landing, Command::new(&binary).env("EMU_CP_ASYNC", mode).output().expect("running the check"))
        })
        .collect();
    let _ = std::fs::remove_dir_all(&dir);
    for (landing, run) in runs {
        let report = String::from_utf8_lossy(&run.stdout);
        eprintln!("asynchronous copies landing {landing:?}:\n{report}");
        assert!(
            run.status.success(),
            "the emulated {name} check failed with copies landing {landing:?} ({}):\n{report}{}",
            run.status,
            String::from_utf8_lossy(&run.stderr)
        );
    }
}

#[test]
fn latent_attention_kernels_match_a_double_precision_reference() {
    run_check("mla");
}

#[test]
fn moe_routing_matches_the_cpu_rule_counts_only_real_tokens_and_both_route_kernels_agree() {
    run_check("route");
}

#[test]
fn the_expert_layout_puts_every_slot_in_one_tile_of_its_expert_and_the_combine_sums_exactly() {
    run_check("moe_layout");
}

#[test]
fn the_norm_kernels_give_the_f32_norm_in_bf16() {
    run_check("norms");
}

#[test]
fn the_fp8_gemv_quantizes_its_bf16_rows_to_the_quantize_kernels_codes() {
    run_check("fp8");
}

#[test]
fn the_grouped_expert_gemm_matches_double_precision_products() {
    run_check("tensor_cores");
}

#[test]
fn tensor_core_prefill_attention_matches_a_double_precision_reference() {
    run_check_with("attention_prefill", &[Copies::WhenIssued, Copies::WhenAwaited]);
}

#[test]
fn the_gemvs_fused_activations_match_the_product_and_the_activation_kernel() {
    run_check("gemv");
}

#[test]
fn decode_attention_reads_an_fp8_cache_as_the_bf16_cache_of_the_same_values() {
    run_check_with("attention_cache", &[Copies::WhenIssued, Copies::WhenAwaited]);
}

#[test]
fn tensor_core_decode_attention_matches_a_double_precision_reference() {
    run_check_with("attention_decode", &[Copies::WhenIssued, Copies::WhenAwaited]);
}

#[test]
fn rope_kv_write_norms_rotates_and_writes_each_head_where_it_belongs() {
    run_check("rope");
}
