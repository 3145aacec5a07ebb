//! The NVTX sink: spans become NVTX thread ranges (push/pop, so nesting shows in Nsight) and marks
//! become NVTX marks, all in the domain "lumen", with one NVTX category and one ARGB colour per
//! [`Category`]. Unlike the recorder it runs all the time while it is on: the attached tool (Nsight
//! Systems, a CUPTI client) chooses its own capture window, through cuProfilerStart/Stop or its
//! own options, the way TensorRT-LLM's default markers work.
//!
//! It goes through the low-level exports of NVIDIA's `nvtx` crate (`nvtx::sys`) so that no call
//! allocates: messages are ASCII strings copied into a per-thread scratch buffer and passed by
//! pointer (every NVTX tool copies a message before the call returns). Registered strings would
//! spare the tool that copy, but need an intern cache keyed by name and show empty names under
//! tools that do not implement string registration. Without an injection library (no tool
//! attached), every NVTX entry point is a null-pointer check inside the NVTX stubs.
//!
//! This module is private to [`crate::instrument`], which decides when to call it.

use crate::instrument::Category;
use nvtx::sys::{self as ffi, ColorType, DomainHandle, EventAttributes, MessageType, MessageValue, PayloadType, PayloadValue};
use std::cell::{Cell, RefCell};
use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The NVTX domain every range and mark goes to.
pub(super) const DOMAIN_NAME: &CStr = c"lumen";

const CATEGORIES: [Category; 6] = [Category::Iteration, Category::Phase, Category::Debug, Category::Api, Category::Alloc, Category::Wait];

static ON: AtomicBool = AtomicBool::new(false);
static DOMAIN: OnceLock<DomainHandle> = OnceLock::new();

thread_local! {
    /// NUL-terminated copy of the message being sent.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// Whether this thread's name was given to NVTX.
    static NAMED: Cell<bool> = const { Cell::new(false) };
}

/// The NVTX category id of `category` in the "lumen" domain (0 means "no category" to NVTX).
pub(super) fn category_id(category: Category) -> u32 {
    category as u32 + 1
}

fn category_c_name(category: Category) -> &'static CStr {
    match category {
        Category::Iteration => c"iteration",
        Category::Phase => c"phase",
        Category::Debug => c"debug",
        Category::Api => c"api",
        Category::Alloc => c"alloc",
        Category::Wait => c"wait",
    }
}

/// The ARGB colour of `category`'s ranges and marks in Nsight.
pub(super) fn color(category: Category) -> u32 {
    match category {
        Category::Iteration => 0xFF76_B900, // green
        Category::Phase => 0xFF1F_77B4,     // blue
        Category::Debug => 0xFF8C_8C8C,     // grey
        Category::Api => 0xFFFF_7F0E,       // orange
        Category::Alloc => 0xFFD6_2728,     // red
        Category::Wait => 0xFF94_67BD,      // purple
    }
}

/// Switches the sink; the first switch on creates the domain and names its categories (this is
/// where NVTX loads the tool named by `NVTX_INJECTION64_PATH`, if any).
pub(super) fn set(on: bool) {
    if on {
        DOMAIN.get_or_init(|| {
            let domain = ffi::domain_create_ascii(DOMAIN_NAME);
            for c in CATEGORIES {
                ffi::domain_name_category_ascii(domain, category_id(c), category_c_name(c));
            }
            domain
        });
    }
    ON.store(on, Ordering::Relaxed);
}

#[inline(always)]
pub(super) fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The domain, once the sink has been switched on at least once.
#[inline]
fn domain() -> Option<DomainHandle> {
    DOMAIN.get().copied()
}

fn attributes(category: Category, message: *const c_char, payload: Option<u64>) -> EventAttributes {
    let (payload_type, payload) = match payload {
        Some(v) => (PayloadType::NVTX_PAYLOAD_TYPE_UNSIGNED_INT64, PayloadValue { ullValue: v }),
        None => (PayloadType::NVTX_PAYLOAD_UNKNOWN, PayloadValue { ullValue: 0 }),
    };
    EventAttributes {
        version: ffi::NVTX_VERSION as u16,
        size: ffi::NVTX_EVENT_ATTRIBUTES_SIZE as u16,
        category: category_id(category),
        colorType: i32::from(ColorType::NVTX_COLOR_ARGB),
        color: color(category),
        payloadType: i32::from(payload_type),
        reserved0: 0,
        payload,
        messageType: i32::from(MessageType::NVTX_MESSAGE_TYPE_ASCII),
        message: MessageValue { ascii: message },
    }
}

/// Runs `f` with `s` as a C string (cut at its first NUL, if any), copied into this thread's
/// scratch buffer; allocates only when the buffer grows or is busy.
fn with_c_str<R>(s: &str, f: impl FnOnce(&CStr) -> R) -> R {
    let mut f = Some(f);
    let done = SCRATCH
        .try_with(|buf| {
            let mut buf = buf.try_borrow_mut().ok()?;
            buf.clear();
            buf.extend_from_slice(s.as_bytes());
            buf.push(0);
            let c = CStr::from_bytes_until_nul(&buf).expect("the buffer ends with a NUL");
            Some((f.take().expect("called once"))(c))
        })
        .ok()
        .flatten();
    match done {
        Some(r) => r,
        None => {
            let bytes = s.as_bytes();
            let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            let c = CString::new(&bytes[..end]).expect("cut at the first NUL");
            (f.take().expect("called once"))(&c)
        }
    }
}

/// Gives NVTX this thread's name (by OS thread id, as an ASCII string) the first time the thread
/// sends something; unnamed threads keep the tool's default.
#[inline]
fn name_thread_once() {
    let _ = NAMED.try_with(|named| {
        if !named.get() {
            named.set(true);
            if let (Some(tid), Some(name)) = (crate::instrument::os_tid(), std::thread::current().name()) {
                with_c_str(name, |c| nvtx::name_thread_ascii(tid, c));
                log(|| format!("thread {name}"));
            }
        }
    });
}

/// Pushes a thread range named `name`; returns whether it did (so the caller pops it).
pub(super) fn push(category: Category, name: &str) -> bool {
    let Some(domain) = domain() else { return false };
    name_thread_once();
    with_c_str(name, |c| {
        ffi::domain_range_push_ex(domain, &attributes(category, c.as_ptr(), None));
    });
    log(|| format!("push {}:{name}", category.name()));
    true
}

/// Pops the innermost range this thread pushed.
pub(super) fn pop() {
    if let Some(domain) = domain() {
        ffi::domain_range_pop(domain);
        log(|| "pop".to_string());
    }
}

/// An instant event named `name`, with an optional unsigned payload (a duration in ns).
pub(super) fn mark(category: Category, name: &str, payload: Option<u64>) {
    let Some(domain) = domain() else { return };
    name_thread_once();
    with_c_str(name, |c| ffi::domain_mark_ex(domain, &attributes(category, c.as_ptr(), payload)));
    log(|| match payload {
        Some(p) => format!("mark {}:{name} payload={p}", category.name()),
        None => format!("mark {}:{name}", category.name()),
    });
}

#[cfg(test)]
thread_local! {
    /// What this thread sent to NVTX, for the unit tests.
    pub(super) static SENT: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

#[cfg(test)]
fn log(event: impl FnOnce() -> String) {
    SENT.with(|s| s.borrow_mut().push(event()));
}

#[cfg(not(test))]
#[inline(always)]
fn log(_event: impl FnOnce() -> String) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_strings_are_cut_at_nul_and_survive_a_busy_buffer() {
        assert_eq!(with_c_str("forward", |c| c.to_owned()), c"forward");
        assert_eq!(with_c_str("a\0b", |c| c.to_owned()), c"a");
        let nested = with_c_str("outer", |outer| {
            let inner = with_c_str("inner name", |c| c.to_owned());
            (outer.to_owned(), inner)
        });
        assert_eq!(nested, (c"outer".to_owned(), c"inner name".to_owned()));
    }

    #[test]
    fn attributes_carry_category_colour_and_message() {
        let msg = c"layer 3";
        let a = attributes(Category::Debug, msg.as_ptr(), Some(42));
        assert_eq!((a.category, a.color, a.colorType), (3, 0xFF8C_8C8C, 1));
        assert_eq!(a.size as usize, std::mem::size_of::<EventAttributes>());
        // SAFETY: the attributes were built with an ASCII message and a u64 payload.
        unsafe {
            assert_eq!(CStr::from_ptr(a.message.ascii), msg);
            assert_eq!(a.payload.ullValue, 42);
        }
        let colours: std::collections::HashSet<u32> = CATEGORIES.iter().map(|&c| color(c)).collect();
        assert_eq!(colours.len(), CATEGORIES.len(), "every category has its own colour");
        let ids: Vec<u32> = CATEGORIES.iter().map(|&c| category_id(c)).collect();
        assert_eq!(ids, [1, 2, 3, 4, 5, 6]);
    }
}
