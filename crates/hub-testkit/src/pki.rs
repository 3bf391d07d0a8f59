//! A private CA and a server certificate for `localhost`, made with the `openssl` command, for
//! tests of TLS clients (a configured `ca_file`) against servers on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files [`localhost_pki`] wrote.
#[derive(Debug, Clone)]
pub struct TestPki {
    /// The CA's certificate (PEM): what a client's `ca_file` names.
    pub ca: PathBuf,
    /// The server's certificate for `localhost` (subjectAltName `DNS:localhost`), signed by the CA.
    pub cert: PathBuf,
    /// The server certificate's private key (PEM, unencrypted).
    pub key: PathBuf,
}

/// Writes a CA (`ca.pem`) and a server certificate for `localhost` signed by it (`cert.pem`,
/// `key.pem`) into `dir`, valid one day.
///
/// # Panics
/// When `openssl` is missing or fails (`scripts/test` installs it).
pub fn localhost_pki(dir: &Path) -> TestPki {
    let ca_subject = "/CN=hub test CA";
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca-key.pem",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            ca_subject,
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "key.pem",
            "-out",
            "req.pem",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap_or_else(|e| panic!("writing {}: {e}", dir.display()));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "req.pem",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca-key.pem",
            "-CAcreateserial",
            "-out",
            "cert.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    TestPki {
        ca: dir.join("ca.pem"),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}): install it (apt-get install -y openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
