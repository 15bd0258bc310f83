//! Optional download of the published MNIST files, for users with internet access (the
//! repository bundles 10,000 digits, enough to train without it).
//!
//! Each file is fetched over HTTP(S) into `<dest>/<name>.part`, its SHA-256 is checked against
//! the published value, and only then is it renamed into place, so an interrupted or corrupt
//! download never leaves a file that looks complete. Files already present with the right hash
//! are not fetched again.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};

/// A well-known public MNIST mirror (the one TensorFlow's data sets use).
pub const DEFAULT_MIRROR: &str = "https://storage.googleapis.com/cvdf-datasets/mnist/";

/// The two training files, which [`crate::data::Dataset::load_dir`] reads.
pub const TRAIN_FILES: [&str; 2] = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"];
/// All four published files (training and test sets).
pub const ALL_FILES: [&str; 4] = [
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
];

/// Largest body accepted for one file (the largest MNIST file is under 10 MB).
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// A published file with its size and SHA-256.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownFile {
    /// File name on the mirror and on disk.
    pub name: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// SHA-256 of the gzipped file.
    pub sha256: [u8; 32],
}

/// The published MNIST files. The digests are those of the original gzip files, which every
/// mirror serves byte for byte.
pub const MNIST_FILES: [KnownFile; 4] = [
    KnownFile {
        name: "train-images-idx3-ubyte.gz",
        bytes: 9_912_422,
        sha256: hex32("440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    },
    KnownFile {
        name: "train-labels-idx1-ubyte.gz",
        bytes: 28_881,
        sha256: hex32("3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    },
    KnownFile {
        name: "t10k-images-idx3-ubyte.gz",
        bytes: 1_648_877,
        sha256: hex32("8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    },
    KnownFile {
        name: "t10k-labels-idx1-ubyte.gz",
        bytes: 4_542,
        sha256: hex32("f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
];

/// The published SHA-256 of an MNIST file, by name; the `expected` argument of [`download`]
/// for the real data set.
pub fn known_sha256(name: &str) -> Option<[u8; 32]> {
    MNIST_FILES.iter().find(|f| f.name == name).map(|f| f.sha256)
}

const fn nibble(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit"),
    }
}

/// A digest from its 64 hex digits, at compile time (a typo fails the build).
const fn hex32(s: &str) -> [u8; 32] {
    let b = s.as_bytes();
    assert!(b.len() == 64, "a SHA-256 has 64 hex digits");
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = (nibble(b[2 * i]) << 4) | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// Parses a SHA-256 written as 64 hex digits (e.g. from the command line).
pub fn parse_sha256_hex(s: &str) -> Option<[u8; 32]> {
    let s = s.trim().as_bytes();
    if s.len() != 64 || !s.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    Some(std::array::from_fn(|i| (nibble(s[2 * i]) << 4) | nibble(s[2 * i + 1])))
}

/// A digest as lowercase hex.
pub fn to_hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a file's contents.
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut hasher = Sha256::new();
    io::copy(&mut File::open(path)?, &mut hasher)?;
    Ok(hasher.finalize().into())
}

/// Where files are downloaded from: a base URL to which file names are appended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mirror {
    base_url: String,
}

impl Default for Mirror {
    fn default() -> Mirror {
        Mirror::new(DEFAULT_MIRROR)
    }
}

impl Mirror {
    /// A mirror at `base_url` (`http://` or `https://`); a missing final `/` is added.
    pub fn new(base_url: impl Into<String>) -> Mirror {
        let mut base_url = base_url.into();
        if !base_url.ends_with('/') {
            base_url.push('/');
        }
        Mirror { base_url }
    }

    /// The base URL, ending in `/`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL of one file.
    pub fn url(&self, file: &str) -> String {
        format!("{}{file}", self.base_url)
    }

    /// Whether the mirror is on this machine (then no proxy is used to reach it).
    fn is_loopback(&self) -> bool {
        let rest = self.base_url.split_once("://").map_or(self.base_url.as_str(), |(_, r)| r);
        let authority = rest.split('/').next().unwrap_or("");
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let host = if host.starts_with('[') {
            host.split(']').next().map_or(host, |h| &h[1..])
        } else {
            host.split(':').next().unwrap_or(host)
        };
        host.eq_ignore_ascii_case("localhost") || host.starts_with("127.") || host == "::1"
    }

    fn agent(&self) -> ureq::Agent {
        let mut config = ureq::Agent::config_builder()
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_global(Some(Duration::from_secs(15 * 60)));
        if self.is_loopback() {
            config = config.proxy(None);
        }
        ureq::Agent::new_with_config(config.build())
    }
}

/// Downloads `files` from `mirror` into the folder `dest` (created if needed).
///
/// For each file: if `dest/<name>` exists and `expected(name)` is its SHA-256, it is kept and
/// not fetched (without an expected digest an existing file is kept as it is). Otherwise it is
/// fetched into `dest/<name>.part`, checked against `expected(name)` when that is `Some`, and
/// renamed to `dest/<name>`. On a digest mismatch, an HTTP error or an interrupted transfer the
/// `.part` file is removed and an error names the file and the reason.
pub fn download(
    mirror: &Mirror, dest: &Path, files: &[&str], expected: impl Fn(&str) -> Option<[u8; 32]>,
) -> anyhow::Result<()> {
    for name in files {
        ensure!(
            !name.is_empty() && !name.contains(['/', '\\']) && *name != "." && *name != "..",
            "{name:?} is not a plain file name"
        );
    }
    fs::create_dir_all(dest).with_context(|| format!("cannot create {}", dest.display()))?;
    let agent = mirror.agent();
    for name in files {
        let want = expected(name);
        let target = dest.join(name);
        if target.is_file() {
            match want {
                None => continue,
                Some(want) if sha256_file(&target).ok() == Some(want) => continue,
                // Present but different (damaged, or another version): fetch it again.
                Some(_) => {}
            }
        }
        let part = dest.join(format!("{name}.part"));
        let result = fetch(&agent, &mirror.url(name), &part).and_then(|got| {
            if let Some(want) = want {
                ensure!(
                    got == want,
                    "SHA-256 mismatch for {name} from {}: expected {}, got {}",
                    mirror.url(name),
                    to_hex(&want),
                    to_hex(&got)
                );
            }
            fs::rename(&part, &target)
                .with_context(|| format!("cannot move {} into place", part.display()))
        });
        if let Err(e) = result {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
    }
    Ok(())
}

/// [`download`] of the published MNIST files, checked against their published digests.
pub fn download_mnist(mirror: &Mirror, dest: &Path, files: &[&str]) -> anyhow::Result<()> {
    download(mirror, dest, files, known_sha256)
}

/// A writer that hashes everything written through it.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// GETs `url` into the file `part` (flushed to disk) and returns the SHA-256 of its contents.
fn fetch(agent: &ureq::Agent, url: &str, part: &Path) -> anyhow::Result<[u8; 32]> {
    let response = agent.get(url).call().map_err(|e| match e {
        ureq::Error::StatusCode(code) => anyhow::anyhow!("GET {url} failed: HTTP status {code}"),
        other => anyhow::anyhow!("GET {url} failed: {other}"),
    })?;
    let file = File::create(part).with_context(|| format!("cannot create {}", part.display()))?;
    let mut out = HashingWriter { inner: io::BufWriter::new(file), hasher: Sha256::new() };
    let mut body = response.into_body().into_reader().take(MAX_FILE_BYTES + 1);
    let copied = io::copy(&mut body, &mut out)
        .with_context(|| format!("download of {url} was interrupted"))?;
    if copied > MAX_FILE_BYTES {
        bail!("{url} is larger than {MAX_FILE_BYTES} bytes; not a data file");
    }
    let HashingWriter { inner, hasher } = out;
    let file = inner
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", part.display()))?;
    file.sync_all().with_context(|| format!("cannot write {}", part.display()))?;
    Ok(hasher.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};
    use std::thread::{self, JoinHandle};
    use std::time::Instant;

    /// A tiny HTTP server on 127.0.0.1 that answers exactly `max_requests` GETs (or gives up
    /// after 30 s) from a fixed table of files under `/mnist/`, then exits.
    struct TestServer {
        mirror: Mirror,
        requests: Arc<Mutex<Vec<String>>>,
        thread: JoinHandle<()>,
    }

    impl TestServer {
        fn start(files: Vec<(&'static str, Vec<u8>)>, max_requests: usize) -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            listener.set_nonblocking(true).unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let log = Arc::clone(&requests);
            let thread = thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut served = 0;
                while served < max_requests && Instant::now() < deadline {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            served += 1;
                            let _ = answer(stream, &files, &log);
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            thread::sleep(Duration::from_millis(5));
                        }
                        Err(_) => break,
                    }
                }
            });
            TestServer {
                mirror: Mirror::new(format!("http://127.0.0.1:{port}/mnist")),
                requests,
                thread,
            }
        }

        /// Waits for the server to finish and returns the paths requested.
        fn finish(self) -> Vec<String> {
            self.thread.join().unwrap();
            Arc::try_unwrap(self.requests).unwrap().into_inner().unwrap()
        }
    }

    fn answer(
        mut stream: TcpStream, files: &[(&str, Vec<u8>)], log: &Mutex<Vec<String>>,
    ) -> io::Result<()> {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut request = Vec::new();
        let mut chunk = [0u8; 1024];
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 65536 {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            request.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&request);
        let path = text.split_whitespace().nth(1).unwrap_or("").to_string();
        log.lock().unwrap().push(path.clone());
        let found =
            path.strip_prefix("/mnist/").and_then(|name| files.iter().find(|(n, _)| *n == name));
        let (status, body): (&str, &[u8]) = match found {
            Some((_, body)) => ("200 OK", body),
            None => ("404 Not Found", b"no such file\n"),
        };
        write!(
            stream,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\
             Connection: close\r\n\r\n",
            body.len()
        )?;
        stream.write_all(body)?;
        stream.flush()
    }

    /// The bundled data files, served under the published training names.
    fn bundled() -> Vec<(&'static str, Vec<u8>)> {
        let dir = crate::data::default_data_dir();
        vec![
            (TRAIN_FILES[0], fs::read(dir.join("images-idx3-ubyte.gz")).unwrap()),
            (TRAIN_FILES[1], fs::read(dir.join("labels-idx1-ubyte.gz")).unwrap()),
        ]
    }

    fn digest(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".part"))
            .collect()
    }

    #[test]
    fn downloads_verifies_and_skips_present_files() {
        let files = bundled();
        let hashes: Vec<(&str, [u8; 32])> = files.iter().map(|(n, b)| (*n, digest(b))).collect();
        let expected = |name: &str| hashes.iter().find(|(n, _)| *n == name).map(|(_, h)| *h);
        // Two files, then one damaged file fetched again.
        let server = TestServer::start(files.clone(), 3);
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("mnist");
        download(&server.mirror, &dest, &TRAIN_FILES, expected).unwrap();
        for (name, body) in &files {
            assert_eq!(&fs::read(dest.join(name)).unwrap(), body);
        }
        assert!(leftovers(&dest).is_empty());
        // The downloaded files load as a data set.
        let data = crate::data::Dataset::load_dir(&dest).unwrap();
        assert_eq!((data.n, data.classes), (10_000, 10));

        // Everything present and intact: no request at all.
        download(&server.mirror, &dest, &TRAIN_FILES, expected).unwrap();
        // A damaged label file is fetched again, the intact image file is not.
        fs::write(dest.join(TRAIN_FILES[1]), b"damaged").unwrap();
        download(&server.mirror, &dest, &TRAIN_FILES, expected).unwrap();
        assert_eq!(fs::read(dest.join(TRAIN_FILES[1])).unwrap(), files[1].1);
        assert_eq!(
            server.finish(),
            vec![
                "/mnist/train-images-idx3-ubyte.gz",
                "/mnist/train-labels-idx1-ubyte.gz",
                "/mnist/train-labels-idx1-ubyte.gz"
            ]
        );
    }

    #[test]
    fn wrong_hash_fails_and_leaves_nothing() {
        let server = TestServer::start(bundled(), 1);
        let dir = tempfile::tempdir().unwrap();
        let err = download(&server.mirror, dir.path(), &TRAIN_FILES[1..], |_| Some([7u8; 32]))
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("SHA-256 mismatch"), "{msg}");
        assert!(msg.contains(&to_hex(&[7u8; 32])), "{msg}");
        assert!(!dir.path().join(TRAIN_FILES[1]).exists());
        assert!(leftovers(dir.path()).is_empty());
        assert_eq!(server.finish().len(), 1);
    }

    #[test]
    fn missing_file_fails_cleanly() {
        let server = TestServer::start(bundled(), 1);
        let dir = tempfile::tempdir().unwrap();
        let err =
            download(&server.mirror, dir.path(), &["t10k-images-idx3-ubyte.gz"], known_sha256)
                .unwrap_err();
        assert!(format!("{err:#}").contains("404"), "{err:#}");
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
        assert_eq!(server.finish(), vec!["/mnist/t10k-images-idx3-ubyte.gz"]);
    }

    #[test]
    fn rejects_unsafe_names() {
        let dir = tempfile::tempdir().unwrap();
        let mirror = Mirror::new("http://127.0.0.1:9/");
        for bad in ["../x", "a/b", "", ".."] {
            assert!(download(&mirror, dir.path(), &[bad], |_| None).is_err());
        }
    }

    #[test]
    fn mirror_urls() {
        let m = Mirror::new("http://localhost:8000/data");
        assert_eq!(m.base_url(), "http://localhost:8000/data/");
        assert_eq!(m.url("a.gz"), "http://localhost:8000/data/a.gz");
        assert!(m.is_loopback());
        assert!(Mirror::new("http://[::1]:80/").is_loopback());
        assert!(Mirror::new("http://127.0.0.1/").is_loopback());
        assert!(!Mirror::default().is_loopback());
        assert_eq!(Mirror::default().base_url(), DEFAULT_MIRROR);
    }

    #[test]
    fn digests_table_and_hex() {
        let h = known_sha256("train-images-idx3-ubyte.gz").unwrap();
        assert_eq!(to_hex(&h), "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609");
        assert_eq!(parse_sha256_hex(&to_hex(&h)), Some(h));
        assert_eq!(parse_sha256_hex(&to_hex(&h).to_uppercase()), Some(h));
        assert_eq!(parse_sha256_hex("abc"), None);
        assert_eq!(parse_sha256_hex(&"g".repeat(64)), None);
        assert!(ALL_FILES.iter().all(|f| known_sha256(f).is_some()));
        assert_eq!(known_sha256("other.gz"), None);
        let path = crate::data::default_data_dir().join("labels-idx1-ubyte.gz");
        assert_eq!(sha256_file(&path).unwrap(), digest(&fs::read(&path).unwrap()));
    }
}
