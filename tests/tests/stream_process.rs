//! The `stream_file` example as two processes, on every socket protocol:
//! a file of a few MiB (not a whole number of chunks) uploaded, then
//! downloaded into another file; both copies equal the original byte for
//! byte, and both sides agree on the length and checksum.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use courier_conformance::{example_path, pattern, run_to_end, Process};

/// A directory of this test's own under the temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "courier-test-{what}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn stream_file_two_processes(proto: &str) {
    let served = TempDir::new("stream-served");
    let local = TempDir::new("stream-local");
    let original = local.0.join("original");
    let data = pattern(5 * (1 << 20) + 12_345, 3);
    std::fs::write(&original, &data).unwrap();

    let exe = example_path("stream_file");
    let mut server = Process::spawn(&exe, &["server", proto, served.0.to_str().unwrap()]);
    let address = server.expect_line("stream_file serving at ").await;

    let (status, up, stderr) =
        run_to_end(&exe, &["put", &address, original.to_str().unwrap(), "copy"]).await;
    assert!(status.success(), "put: {status:?}; stderr: {stderr}");
    assert!(std::fs::read(served.0.join("copy")).unwrap() == data);

    let back = local.0.join("back");
    let (status, down, stderr) =
        run_to_end(&exe, &["get", &address, "copy", back.to_str().unwrap()]).await;
    assert!(status.success(), "get: {status:?}; stderr: {stderr}");
    assert!(std::fs::read(&back).unwrap() == data);

    // Both lines report the same length and checksum.
    let figures = |line: &str| {
        let words: Vec<&str> = line.split_whitespace().collect();
        (words[0].to_owned(), words[words.len() - 1].to_owned())
    };
    assert_eq!(figures(up.trim()).0, data.len().to_string(), "{up}");
    assert_eq!(figures(up.trim()), figures(down.trim()), "{up} / {down}");

    // A name that leaves the directory is refused, and says why.
    let (status, _, stderr) = run_to_end(&exe, &["get", &address, "../etc", "/dev/null"]).await;
    assert!(!status.success());
    assert!(stderr.contains("not a plain file name"), "{stderr}");

    let (status, _, stderr) = run_to_end(&exe, &["shutdown", &address]).await;
    assert!(status.success(), "shutdown: {stderr}");
    let status = server.wait().await;
    assert!(status.success(), "server: {status:?}");
}

macro_rules! process_tests {
    ($($proto:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $proto() {
            stream_file_two_processes(stringify!($proto)).await
        }
    )*};
}

process_tests!(tcp, unix, shm, quic);
