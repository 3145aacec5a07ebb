//! Headless Chromium for the browser tests: Debian's `/usr/bin/chromium` (the apt package
//! `chromium`, installed by `scripts/setup.sh`) loads a page file with a fresh profile, and the
//! tests read its DOM dump, its screenshot and the console lines it logged.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::scratch::Scratch;

const CHROMIUM: &str = "/usr/bin/chromium";
const BROWSER_TIMEOUT: Duration = Duration::from_secs(120);
/// One browser at a time: the tests share a small machine.
static BROWSER: Mutex<()> = Mutex::new(());

/// No GPU, no sandbox (tests may run as root), nothing fetched from the network, and the page's
/// console output logged to stderr.
const FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--enable-logging=stderr",
    "--v=0",
];

/// What one headless Chromium run printed.
pub struct Browser {
    pub stdout: String,
    pub stderr: String,
}

impl Browser {
    /// The log lines reporting the page's console output and uncaught errors.
    pub fn console(&self) -> Vec<&str> {
        self.stderr.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect()
    }
}

/// Runs headless Chromium on the page file `page` with `args`; its profile and captured output
/// go into `scratch`, named after `case`. Panics when Chromium is not installed, fails, or runs
/// past two minutes.
pub fn run(scratch: &Scratch, case: &str, args: &[String], page: &str) -> Browser {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run scripts/setup.sh, which installs the apt package chromium that this test drives"
    );
    let _browser = BROWSER.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let (stdout_path, stderr_path) = (scratch.path(&format!("{case}.stdout")), scratch.path(&format!("{case}.stderr")));
    let mut child = Command::new(CHROMIUM)
        .args(FLAGS)
        .arg(format!("--user-data-dir={}", scratch.path(&format!("profile-{case}"))))
        .args(args)
        .arg(file_url(page))
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("create the stdout file"))
        .stderr(File::create(&stderr_path).expect("create the stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("start {CHROMIUM}: {e}"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > BROWSER_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium ran past {BROWSER_TIMEOUT:?} on case {case}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let browser = Browser {
        stdout: fs::read_to_string(&stdout_path).expect("read chromium's stdout"),
        stderr: fs::read_to_string(&stderr_path).unwrap_or_default(),
    };
    assert!(status.success(), "chromium failed on case {case} ({status}):\n{}", browser.stderr);
    browser
}

/// Loads `page` and prints its DOM, once its scripts have run, to [`Browser::stdout`].
pub fn dump_dom(scratch: &Scratch, case: &str, page: &str) -> Browser {
    run(scratch, case, &["--dump-dom".into()], page)
}

/// Renders `page` in a window of `width` × `height` pixels, without scroll bars, to the PNG file `png`.
pub fn screenshot(scratch: &Scratch, case: &str, page: &str, png: &str, (width, height): (u32, u32)) -> Browser {
    let args = [format!("--screenshot={png}"), format!("--window-size={width},{height}"), "--hide-scrollbars".into()];
    run(scratch, case, &args, page)
}

/// The element of a dumped DOM with `id`, from its opening tag to the first `</tag>` after it.
pub fn element<'a>(dom: &'a str, tag: &str, id: &str) -> &'a str {
    let at = dom.find(&format!(" id=\"{id}\"")).unwrap_or_else(|| panic!("no element with id {id} in the DOM:\n{dom}"));
    let start = dom[..at].rfind('<').expect("an id is inside a tag");
    assert!(dom[start + 1..].starts_with(tag), "{id} is not a <{tag}>: {}", &dom[start..at + 40]);
    let end = dom[start..].find(&format!("</{tag}>")).unwrap_or_else(|| panic!("<{tag} id={id}> is never closed")) + start;
    &dom[start..end]
}

/// `file://` URL of the absolute path `path`, every byte outside `[A-Za-z0-9/._-]` percent-encoded.
fn file_url(path: &str) -> String {
    let mut url = String::from("file://");
    for byte in path.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'.' | b'-' | b'_' => url.push(byte as char),
            _ => url.push_str(&format!("%{byte:02X}")),
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_url_encodes_what_a_path_may_hold_beyond_plain_characters() {
        assert_eq!(file_url("/tmp/a b/ü#1.html"), "file:///tmp/a%20b/%C3%BC%231.html");
    }

    #[test]
    fn an_element_runs_from_its_opening_tag_to_its_closing_one() {
        let dom = r#"<body><pre id="verdict">OK 3 events</pre><pre id="other">x</pre></body>"#;
        assert_eq!(element(dom, "pre", "verdict"), r#"<pre id="verdict">OK 3 events"#);
    }
}
