//! Test certificates made at test time (rcgen), never committed: a CA, a
//! server certificate it signed (DNS `localhost`, IP `127.0.0.1`; server
//! and client use, so brokers can present it on their own links to peers
//! requiring mutual TLS), a client certificate it signed, and a second,
//! unrelated CA.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

/// PEM files of a test PKI, in a directory that lives as long as this.
pub struct TestPki {
    _dir: tempfile::TempDir,
    /// The CA certificate.
    pub ca: PathBuf,
    /// Server certificate (signed by the CA) and its key.
    pub server_cert: PathBuf,
    /// Key of `server_cert`.
    pub server_key: PathBuf,
    /// Client certificate (signed by the CA) and its key.
    pub client_cert: PathBuf,
    /// Key of `client_cert`.
    pub client_key: PathBuf,
    /// A CA that signed none of the above.
    pub other_ca: PathBuf,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write PEM");
    path
}

fn ca(name: &str) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    (params.self_signed(&key).expect("CA cert"), key)
}

fn leaf(
    name: &str,
    sans: &[&str],
    usages: Vec<ExtendedKeyUsagePurpose>,
    issuer: &rcgen::Certificate,
    issuer_key: &KeyPair,
) -> (String, String) {
    let key = KeyPair::generate().expect("leaf key");
    let mut params =
        CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = usages;
    let cert = params.signed_by(&key, issuer, issuer_key).expect("leaf cert");
    (cert.pem(), key.serialize_pem())
}

impl TestPki {
    /// Generates the certificates and writes them as PEM files.
    pub fn new() -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let (ca_cert, ca_key) = ca("ferromq test CA");
        let (server, server_key) = leaf(
            "ferromq test server",
            &["localhost", "127.0.0.1"],
            vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth],
            &ca_cert,
            &ca_key,
        );
        let (client, client_key) = leaf(
            "ferromq test client",
            &["client.test"],
            vec![ExtendedKeyUsagePurpose::ClientAuth],
            &ca_cert,
            &ca_key,
        );
        let (other, _) = ca("unrelated CA");
        let d = dir.path();
        TestPki {
            ca: write(d, "ca.pem", &ca_cert.pem()),
            server_cert: write(d, "server.pem", &server),
            server_key: write(d, "server-key.pem", &server_key),
            client_cert: write(d, "client.pem", &client),
            client_key: write(d, "client-key.pem", &client_key),
            other_ca: write(d, "other-ca.pem", &other.pem()),
            _dir: dir,
        }
    }

    /// Environment for a server in `mode` (`off`, `permissive`,
    /// `enforcing`) presenting the server certificate; with `mutual`,
    /// clients need a certificate signed by the CA.
    pub fn server_env(&self, mode: &str, mutual: bool) -> Vec<(String, String)> {
        let mut env = vec![
            ("FERROMQ__TLS__MODE".to_string(), mode.to_string()),
            ("FERROMQ__TLS__CERT".to_string(), path(&self.server_cert)),
            ("FERROMQ__TLS__KEY".to_string(), path(&self.server_key)),
        ];
        if mutual {
            env.push(("FERROMQ__TLS__CLIENT_CA".to_string(), path(&self.ca)));
        }
        env
    }

    /// Environment making a broker's own connections (registration,
    /// replication) speak TLS trusting the CA.
    pub fn outgoing_env(&self) -> Vec<(String, String)> {
        vec![
            ("FERROMQ__TLS__CLIENT".to_string(), "true".to_string()),
            ("FERROMQ__TLS__CA".to_string(), path(&self.ca)),
        ]
    }

    /// CLI flags of a TLS client trusting the CA (no certificate).
    pub fn client_args(&self) -> Vec<String> {
        vec!["--tls-ca".to_string(), path(&self.ca)]
    }

    /// CLI flags of a TLS client trusting the CA and presenting the client
    /// certificate.
    pub fn mutual_client_args(&self) -> Vec<String> {
        let mut args = self.client_args();
        args.extend([
            "--tls-cert".to_string(),
            path(&self.client_cert),
            "--tls-key".to_string(),
            path(&self.client_key),
        ]);
        args
    }
}

fn path(p: &Path) -> String {
    p.to_str().expect("utf-8 path").to_string()
}

/// Starts `ferromq ARGS` with `env` (e.g. a TLS name server or broker) and
/// waits for its ready line; killed on drop like every [`super::ServerProcess`].
pub fn spawn(args: &[&str], env: &[(String, String)]) -> super::ServerProcess {
    let (child, line, stderr) =
        super::try_spawn_server(args, env, std::time::Duration::from_secs(30)).unwrap_or_else(|e| panic!("{e}"));
    let optional = |name: &str| {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(name))
            .unwrap_or("-")
            .to_string()
    };
    super::ServerProcess {
        child,
        broker_addr: optional("broker="),
        namesrv_addr: optional("namesrv="),
        http_addr: optional("http="),
        data_dir: args
            .iter()
            .position(|a| *a == "--data-dir")
            .and_then(|i| args.get(i + 1))
            .map(PathBuf::from)
            .unwrap_or_default(),
        stderr,
    }
}
