//! Proves that lumen's NVTX ranges reach an NVTX tool. A tiny injection library, written in C
//! below and compiled with `cc`, implements NVTX's tool side of the protocol: NVTX dlopens the
//! library named by `NVTX_INJECTION64_PATH` at the first NVTX call and calls its
//! `InitializeInjectionNvtx2` with a function that returns export tables; the library fills the
//! CORE2 (domain) and CORE callback slots and logs every call to the file named by
//! `LUMEN_NVTX_TEST_LOG`. The test re-runs this test binary as a child process with those variables
//! (a process loads its tool once, at NVTX's first call), lets `child_process` emit spans and marks,
//! and checks the log.

use lumen_trace::instrument::{self, mark, span, span_named, wait, Category};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TOOL_C: &str = r#"
#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The parts of nvtxDetail/nvtxTypes.h and nvToolsExt.h (NVTX v3) a tool needs. */
typedef void (*NvtxFunctionPointer)(void);
typedef NvtxFunctionPointer **NvtxFunctionTable;
typedef struct {
    size_t struct_size;
    int (*GetModuleFunctionTable)(int module, NvtxFunctionTable *out_table, unsigned int *out_size);
} NvtxExportTableCallbacks;
typedef const void *(*NvtxGetExportTableFunc_t)(uint32_t export_table_id);
typedef struct {
    uint16_t version;
    uint16_t size;
    uint32_t category;
    int32_t colorType;
    uint32_t color;
    int32_t payloadType;
    int32_t reserved0;
    union { uint64_t ullValue; int64_t llValue; double dValue; } payload;
    int32_t messageType;
    union { const char *ascii; const void *unicode; const void *registered; } message;
} EventAttributes;

enum { ETID_CALLBACKS = 1, MODULE_CORE = 1, MODULE_CORE2 = 5 };
enum { CORE_NameOsThreadA = 14 };
enum { CORE2_DomainMarkEx = 1, CORE2_DomainRangePushEx = 4, CORE2_DomainRangePop = 5, CORE2_DomainNameCategoryA = 8,
       CORE2_DomainCreateA = 12 };

static FILE *out;
static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static void logline(const char *fmt, ...) {
    va_list ap;
    pthread_mutex_lock(&out_lock);
    va_start(ap, fmt);
    vfprintf(out, fmt, ap);
    va_end(ap);
    fputc('\n', out);
    fflush(out);
    pthread_mutex_unlock(&out_lock);
}

static long tid(void) { return (long)syscall(SYS_gettid); }
static const char *msg(const EventAttributes *a) { return a->messageType == 1 ? a->message.ascii : "<not ascii>"; }

/* A domain handle is the domain's name. */
static void *domain_create(const char *name) {
    logline("domain %s", name);
    return strdup(name);
}
static void name_category(void *domain, uint32_t id, const char *name) { logline("category %s %u %s", (char *)domain, id, name); }
static int range_push(void *domain, const EventAttributes *a) {
    logline("push %s tid=%ld cat=%u color=%08x %s", (char *)domain, tid(), a->category, a->color, msg(a));
    return 0;
}
static int range_pop(void *domain) {
    logline("pop %s tid=%ld", (char *)domain, tid());
    return 0;
}
static void mark(void *domain, const EventAttributes *a) {
    if (a->payloadType == 1)
        logline("mark %s tid=%ld cat=%u color=%08x payload=%llu %s", (char *)domain, tid(), a->category, a->color,
                (unsigned long long)a->payload.ullValue, msg(a));
    else
        logline("mark %s tid=%ld cat=%u color=%08x %s", (char *)domain, tid(), a->category, a->color, msg(a));
}
static void name_thread(uint32_t id, const char *name) { logline("thread %u %s", id, name); }

static int hook(NvtxGetExportTableFunc_t get, int module, unsigned int id, NvtxFunctionPointer fn) {
    const NvtxExportTableCallbacks *callbacks = (const NvtxExportTableCallbacks *)get(ETID_CALLBACKS);
    NvtxFunctionTable table = NULL;
    unsigned int size = 0;
    if (!callbacks || !callbacks->GetModuleFunctionTable(module, &table, &size) || !table || id >= size) {
        logline("cannot hook module %d id %u", module, id);
        return 0;
    }
    *table[id] = fn;
    return 1;
}

int InitializeInjectionNvtx2(NvtxGetExportTableFunc_t get) {
    const char *path = getenv("LUMEN_NVTX_TEST_LOG");
    if (!path || !(out = fopen(path, "a"))) return 0;
    logline("init");
    return hook(get, MODULE_CORE2, CORE2_DomainCreateA, (NvtxFunctionPointer)domain_create)
        && hook(get, MODULE_CORE2, CORE2_DomainNameCategoryA, (NvtxFunctionPointer)name_category)
        && hook(get, MODULE_CORE2, CORE2_DomainRangePushEx, (NvtxFunctionPointer)range_push)
        && hook(get, MODULE_CORE2, CORE2_DomainRangePop, (NvtxFunctionPointer)range_pop)
        && hook(get, MODULE_CORE2, CORE2_DomainMarkEx, (NvtxFunctionPointer)mark)
        && hook(get, MODULE_CORE, CORE_NameOsThreadA, (NvtxFunctionPointer)name_thread);
}
"#;

/// Builds the injection library once per test process.
fn tool() -> &'static Path {
    static TOOL: OnceLock<PathBuf> = OnceLock::new();
    TOOL.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nvtx_tool_{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = dir.join("lumen_nvtx_log.c");
        let lib = dir.join("liblumen_nvtx_log.so");
        std::fs::write(&src, TOOL_C).unwrap();
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O1", "-Wall", "-Werror", "-o"])
            .arg(&lib)
            .arg(&src)
            .output()
            .expect("the test needs a C compiler on PATH as `cc`");
        assert!(out.status.success(), "cc failed:\n{}", String::from_utf8_lossy(&out.stderr));
        lib
    })
}

/// Runs `child_process` in a new process of this test binary with the tool attached, `LUMEN_NVTX`
/// set to `lumen_nvtx` (or unset), and returns the tool's log ("" if the tool never started).
fn run_child(name: &str, lumen_nvtx: Option<&str>, expect_on: bool) -> String {
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("nvtx_{name}_{}.log", std::process::id()));
    let _ = std::fs::remove_file(&log);
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["child_process", "--exact", "--nocapture", "--test-threads=1"])
        .env("NVTX_INJECTION64_PATH", tool())
        .env("LUMEN_NVTX_TEST_LOG", &log)
        .env("LUMEN_NVTX_TEST_CHILD", if expect_on { "on" } else { "off" })
        .env_remove("LUMEN_NVTX");
    if let Some(v) = lumen_nvtx {
        cmd.env("LUMEN_NVTX", v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "child failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("1 passed"), "the child did not run child_process:\n{stdout}");
    std::fs::read_to_string(&log).unwrap_or_default()
}

/// The child's side: emits spans and marks on a thread named "lumen-engine".
#[test]
fn child_process() {
    let Ok(expect) = std::env::var("LUMEN_NVTX_TEST_CHILD") else { return };
    std::thread::Builder::new()
        .name("lumen-engine".into())
        .spawn(move || {
            assert_eq!(instrument::nvtx_from_env(), expect == "on");
            assert_eq!(instrument::nvtx_enabled(), expect == "on");
            instrument::configure(false, true, false, true);
            {
                let mut iter = span_named(Category::Iteration, || "iter 0".into());
                {
                    let _forward = span(Category::Phase, "forward");
                    let _layer = span(Category::Debug, "layer 0"); // debug ranges are not configured
                    mark(Category::Api, "first token", || None);
                }
                iter.rename(|| "iter 0: 1 ctx reqs, 0 gen reqs".into());
            }
            wait("engine idle", || ());
            assert_eq!(instrument::drain().spans.len(), 0, "no profiling window was open");
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn ranges_and_marks_reach_an_nvtx_tool() {
    let log = run_child("on", None, true);
    let lines: Vec<&str> = log.lines().collect();
    let thread = lines.iter().find_map(|l| l.strip_prefix("thread ")).unwrap_or_else(|| panic!("no thread name in:\n{log}"));
    let (tid, name) = thread.split_once(' ').unwrap();
    assert_eq!(name, "lumen-engine");
    // Every event came from the named thread; drop the tids to compare the rest.
    let tid_field = format!(" tid={tid} ");
    let events: Vec<String> = lines
        .iter()
        .filter(|l| !l.starts_with("thread "))
        .map(|l| {
            assert!(
                !l.contains(" tid=") || l.contains(&tid_field) || l.ends_with(&format!(" tid={tid}")),
                "event from another thread: {l}"
            );
            l.replace(&tid_field, " ").replace(&format!(" tid={tid}"), "")
        })
        .collect();
    let expected = [
        "init",
        "domain lumen",
        "category lumen 1 iteration",
        "category lumen 2 phase",
        "category lumen 3 debug",
        "category lumen 4 api",
        "category lumen 5 alloc",
        "category lumen 6 wait",
        "push lumen cat=1 color=ff76b900 iter 0",
        "push lumen cat=2 color=ff1f77b4 forward",
        "mark lumen cat=4 color=ffff7f0e first token",
        "pop lumen",
        "mark lumen cat=1 color=ff76b900 iter 0: 1 ctx reqs, 0 gen reqs",
        "pop lumen",
        "push lumen cat=6 color=ff9467bd engine idle",
        "pop lumen",
    ];
    assert_eq!(events, expected, "tool log:\n{log}");
}

#[test]
fn lumen_nvtx_0_keeps_an_attached_tool_silent() {
    let log = run_child("off", Some("0"), false);
    assert!(!log.lines().any(|l| l.starts_with("push") || l.starts_with("mark")), "NVTX was forced off, yet the tool saw:\n{log}");
}

#[test]
fn lumen_nvtx_1_is_on_with_the_tool_too() {
    let log = run_child("forced_on", Some("1"), true);
    assert!(log.lines().any(|l| l.starts_with("push lumen") && l.ends_with(" forward")), "tool log:\n{log}");
}
