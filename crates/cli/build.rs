//! Builds the CUPTI collector (crates/collect) as a shared library, in the profile `lumen` itself
//! is built in, for `lumen` to embed: `lumen profile` writes it out when it runs, so the `lumen`
//! executable is the only artefact. The library gets a target directory of its own under
//! `OUT_DIR`, so the nested build never waits on the outer one's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let cli = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let workspace = cli.join("../..");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let release = std::env::var("PROFILE").is_ok_and(|p| p == "release");
    let target = out.join("collector-target");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());

    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "-p", "lumen-collect", "--lib", "--manifest-path"])
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        // Symbols stay (for backtraces from inside a profiled process); debug info would make
        // the embedded copy ten times larger.
        .env("CARGO_PROFILE_RELEASE_STRIP", "debuginfo")
        .env("CARGO_PROFILE_DEV_STRIP", "debuginfo");
    if release {
        build.arg("--release");
    }
    let status = build.status().unwrap_or_else(|e| panic!("cannot run cargo to build the collector library: {e}"));
    assert!(status.success(), "building the collector library (crates/collect) failed: {status}");

    let built = target.join(if release { "release" } else { "debug" }).join("liblumen_collect.so");
    std::fs::copy(&built, out.join("liblumen_collect.so")).unwrap_or_else(|e| panic!("cannot copy {}: {e}", built.display()));

    for watched in ["crates/collect/src", "crates/collect/Cargo.toml", "crates/trace/src", "crates/trace/Cargo.toml", "Cargo.lock"] {
        rerun_if_changed(&workspace.join(watched));
    }
}

fn rerun_if_changed(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}
