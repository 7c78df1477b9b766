//! A tenant's own certificate authority, made offline with the `openssl` command (its key
//! never reaches Trellis), for the bring-your-own-intermediate tests of the API and the console.

use std::path::Path;

/// Runs `openssl` with `args` in `dir`; fails the test, naming the tool, when it is missing.
pub fn openssl(dir: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("these tests need the `openssl` command (Debian/Ubuntu: apt install openssl): {e}")
    })
}

/// `openssl …` that must succeed; returns its standard output.
pub fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let out = openssl(dir, args);
    assert!(
        out.status.success(),
        "openssl {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tenant's root that signs CSRs as CA certificates (or, with `ca: false`, as leaves) for
/// one trust domain.
pub struct TenantRoot {
    dir: tempfile::TempDir,
}

impl TenantRoot {
    pub fn new(trust_domain: &str) -> TenantRoot {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let write = |name: &str, text: &str| std::fs::write(d.join(name), text).unwrap();
        write(
            "root.cnf",
            "[req]\ndistinguished_name=dn\n[dn]\n[v3_root]\nbasicConstraints=critical,CA:TRUE\n\
             keyUsage=critical,keyCertSign,cRLSign\nsubjectKeyIdentifier=hash\n",
        );
        let san = format!("subjectAltName=URI:spiffe://{trust_domain}\n");
        write(
            "ca.ext",
            &format!(
                "basicConstraints=critical,CA:TRUE,pathlen:0\nkeyUsage=critical,keyCertSign,cRLSign\n{san}"
            ),
        );
        write(
            "leaf.ext",
            &format!("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n{san}"),
        );
        openssl_ok(d, &["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "root.key"]);
        let subject = "/O=Tenant/CN=Tenant root";
        openssl_ok(
            d,
            &["req", "-x509", "-new", "-key", "root.key", "-sha256", "-days", "3650", "-subj", subject]
                .into_iter()
                .chain(["-config", "root.cnf", "-extensions", "v3_root", "-out", "root.pem"])
                .collect::<Vec<_>>(),
        );
        TenantRoot { dir }
    }

    /// The root certificate, PEM.
    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("root.pem")).unwrap()
    }

    /// `csr` signed, then the root: the chain to upload.
    pub fn sign(&self, csr: &str, ca: bool) -> String {
        let d = self.dir.path();
        std::fs::write(d.join("in.csr"), csr).unwrap();
        let ext = if ca { "ca.ext" } else { "leaf.ext" };
        openssl_ok(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "in.csr",
                "-CA",
                "root.pem",
                "-CAkey",
                "root.key",
                "-CAcreateserial",
                "-days",
                "365",
                "-sha256",
                "-extfile",
                ext,
                "-out",
                "out.pem",
            ],
        );
        let read = |f: &str| std::fs::read_to_string(d.join(f)).unwrap();
        format!("{}{}", read("out.pem"), read("root.pem"))
    }
}
