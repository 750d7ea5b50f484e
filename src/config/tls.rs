//! TLS material the config names: a listener's certificates (a default PEM chain and key, more
//! chosen by SNI) and upstream CA bundles. Loaded and checked here, with plain rustls (no
//! Pingora), so that `sluice check` and the running edge (startup and every reload) read them the
//! same way.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::sign::CertifiedKey;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// `listen[].tls`: TLS termination with HTTP/2 and HTTP/1.1 offered by ALPN.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTls {
    /// Default certificate chain (PEM, leaf first): served when no `sni` entry matches.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// More certificates, chosen by the name the client asks for (SNI).
    #[serde(default)]
    pub sni: Vec<SniCertificate>,
}

/// `listen[].tls.sni[]`: a certificate served to clients asking for one of `names`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniCertificate {
    /// Host names (`api.example.com`) or one-label wildcards (`*.example.com`).
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A problem with one TLS file, named by its config key relative to the `tls` section
/// (`cert`, `key`, `sni[1].names[0]`, …).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFileError {
    pub key: String,
    pub message: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

fn file_error(key: impl Into<String>, message: impl Into<String>) -> TlsFileError {
    TlsFileError {
        key: key.into(),
        message: message.into(),
    }
}

/// A name a certificate is served for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SniName {
    /// `api.example.com` (lower case).
    Exact(String),
    /// `*.example.com`: stored as `.example.com`; matches exactly one more label in front.
    Wildcard(String),
}

impl SniName {
    pub fn parse(name: &str) -> Result<SniName, String> {
        let lower = name.trim_end_matches('.').to_ascii_lowercase();
        let (wildcard, host) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        if host.contains('*') {
            return Err(format!(
                "{name:?}: a wildcard is only allowed as the whole first label (`*.example.com`)"
            ));
        }
        if host.parse::<std::net::IpAddr>().is_ok() {
            return Err(format!(
                "{name:?}: an IP address is never sent as SNI; use a host name"
            ));
        }
        match ServerName::try_from(host) {
            Ok(ServerName::DnsName(_)) if !host.is_empty() => {}
            _ => return Err(format!("{name:?} is not a valid host name")),
        }
        Ok(if wildcard {
            SniName::Wildcard(format!(".{host}"))
        } else {
            SniName::Exact(host.to_string())
        })
    }

    /// Whether a client's SNI (already lower case, no trailing dot) is this name.
    pub fn matches(&self, server_name: &str) -> bool {
        match self {
            SniName::Exact(name) => name == server_name,
            SniName::Wildcard(suffix) => server_name
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        }
    }
}

/// Every certificate of one listener, loaded: what its certificate resolver serves.
#[derive(Debug)]
pub struct ListenerCerts {
    pub default: Arc<CertifiedKey>,
    /// In config order; exact names are tried before wildcards.
    pub by_name: Vec<(SniName, Arc<CertifiedKey>)>,
    /// Digest of the files' bytes, to tell when they change on disk.
    pub fingerprint: [u8; 32],
}

impl ListenerCerts {
    /// Loads and checks every file of a listener's `tls` section.
    pub fn load(tls: &ListenerTls) -> Result<ListenerCerts, TlsFileError> {
        let files = read_files(tls)?;
        let default = certified_key(&files[0], "cert", "key")?;
        let mut by_name = Vec::new();
        let mut seen: Vec<SniName> = Vec::new();
        for (i, entry) in tls.sni.iter().enumerate() {
            if entry.names.is_empty() {
                return Err(file_error(
                    format!("sni[{i}].names"),
                    "needs at least one name",
                ));
            }
            let key = Arc::new(certified_key(
                &files[i + 1],
                &format!("sni[{i}].cert"),
                &format!("sni[{i}].key"),
            )?);
            for (j, name) in entry.names.iter().enumerate() {
                let parsed = SniName::parse(name)
                    .map_err(|m| file_error(format!("sni[{i}].names[{j}]"), m))?;
                if seen.contains(&parsed) {
                    return Err(file_error(
                        format!("sni[{i}].names[{j}]"),
                        format!("{name:?} is listed twice"),
                    ));
                }
                seen.push(parsed.clone());
                by_name.push((parsed, key.clone()));
            }
        }
        // Exact names first, so that `api.example.com` wins over `*.example.com`.
        by_name.sort_by_key(|(name, _)| matches!(name, SniName::Wildcard(_)));
        Ok(ListenerCerts {
            default: Arc::new(default),
            by_name,
            fingerprint: fingerprint_of(&files),
        })
    }

    /// The digest of the files as they are on disk now (read, not parsed).
    pub fn fingerprint(tls: &ListenerTls) -> Result<[u8; 32], TlsFileError> {
        read_files(tls).map(|files| fingerprint_of(&files))
    }

    /// The certificate for a client's SNI (any case, maybe with a trailing dot); the default
    /// when it sent none or none matches.
    pub fn choose(&self, server_name: Option<&str>) -> &Arc<CertifiedKey> {
        let Some(name) = server_name else {
            return &self.default;
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.by_name
            .iter()
            .find(|(sni, _)| sni.matches(&name))
            .map(|(_, key)| key)
            .unwrap_or(&self.default)
    }
}

/// The PEM bytes of one certificate chain and its key, with their config keys.
struct PemPair {
    cert: Vec<u8>,
    key: Vec<u8>,
    cert_path: PathBuf,
}

fn read_files(tls: &ListenerTls) -> Result<Vec<PemPair>, TlsFileError> {
    let pairs = std::iter::once((&tls.cert, &tls.key, "cert".to_string(), "key".to_string()))
        .chain(tls.sni.iter().enumerate().map(|(i, e)| {
            (
                &e.cert,
                &e.key,
                format!("sni[{i}].cert"),
                format!("sni[{i}].key"),
            )
        }));
    pairs
        .map(|(cert, key, cert_key, key_key)| {
            Ok(PemPair {
                cert: read(cert).map_err(|m| file_error(cert_key, m))?,
                key: read(key).map_err(|m| file_error(key_key, m))?,
                cert_path: cert.clone(),
            })
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn fingerprint_of(files: &[PemPair]) -> [u8; 32] {
    let mut digest = Sha256::new();
    for pair in files {
        for bytes in [&pair.cert, &pair.key] {
            digest.update((bytes.len() as u64).to_le_bytes());
            digest.update(bytes);
        }
    }
    digest.finalize().into()
}

fn certified_key(
    pair: &PemPair,
    cert_key: &str,
    key_key: &str,
) -> Result<CertifiedKey, TlsFileError> {
    let chain = pem_certificates(&pair.cert)
        .map_err(|m| file_error(cert_key, format!("{}: {m}", pair.cert_path.display())))?;
    if is_encrypted(&pair.key) {
        return Err(file_error(key_key, ENCRYPTED_KEY));
    }
    let key = PrivateKeyDer::from_pem_slice(&pair.key).map_err(|e| {
        file_error(
            key_key,
            format!("no PEM private key (PKCS#8, PKCS#1 or SEC1) found: {e}"),
        )
    })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| file_error(key_key, format!("unsupported private key: {e}")))?;
    let certified = CertifiedKey::new(chain, signing_key);
    match certified.keys_match() {
        Ok(()) => Ok(certified),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(file_error(
                key_key,
                format!(
                    "the key does not belong to the certificate in {}",
                    pair.cert_path.display()
                ),
            ))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(certified),
        Err(e) => Err(file_error(
            cert_key,
            format!(
                "{}: not a usable certificate: {e}",
                pair.cert_path.display()
            ),
        )),
    }
}

/// The certificates of a PEM file (other sections are ignored); at least one.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("malformed PEM: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate (BEGIN CERTIFICATE) found".into());
    }
    Ok(certs)
}

/// The system's CA certificates that rustls can use as roots, and how many it cannot (a store
/// with a malformed certificate in it: Pingora's own loading panics on one).
pub fn usable_roots(certs: Vec<CertificateDer<'static>>) -> (Vec<CertificateDer<'static>>, usize) {
    let total = certs.len();
    let usable: Vec<_> = certs
        .into_iter()
        .filter(|cert| rustls::RootCertStore::empty().add(cert.clone()).is_ok())
        .collect();
    let skipped = total - usable.len();
    (usable, skipped)
}

/// Certificates as PEM (what Redis's client takes its roots as).
pub fn pem_of(certs: &[CertificateDer<'_>]) -> Vec<u8> {
    use base64::Engine;
    let mut pem = String::new();
    for cert in certs {
        let text = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        for line in text.as_bytes().chunks(64) {
            // Base64 is ASCII.
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    pem.into_bytes()
}

/// `upstreams.NAME.ca_file`: the CA certificates to verify that upstream with, each one checked
/// as a trust anchor.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = pem_certificates(&read(path)?).map_err(|m| format!("{}: {m}", path.display()))?;
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| {
            format!(
                "{}: certificate {} is not a usable CA certificate: {e}",
                path.display(),
                i + 1
            )
        })?;
    }
    Ok(certs)
}

/// `upstreams.NAME.sni`: a host name or IP address rustls can verify a certificate against.
pub fn check_upstream_sni(name: &str) -> Result<(), String> {
    if name.is_empty() {
        // Pingora skips verification when the SNI is empty: never allow it.
        return Err("must not be empty".into());
    }
    ServerName::try_from(name)
        .map(|_| ())
        .map_err(|_| format!("{name:?} is not a valid host name or IP address"))
}

/// An encrypted key is said to be so: "no key found" or "unsupported key" would send its owner
/// looking for the wrong problem, and Sluice has no passphrase to open it with.
const ENCRYPTED_KEY: &str = "the private key is encrypted (no passphrase can be given): write it \
    unencrypted, e.g. `openssl pkey -in KEY -out KEY.plain`, readable only by Sluice";

/// PKCS#8 `ENCRYPTED PRIVATE KEY`, or a legacy key with `Proc-Type: 4,ENCRYPTED`.
fn is_encrypted(pem: &[u8]) -> bool {
    pem.windows(b"ENCRYPTED".len()).any(|w| w == b"ENCRYPTED")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encrypted_key_is_named_as_such() {
        let pkcs8 =
            b"-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let legacy = b"-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-256-CBC,00\n\nMIIF\n-----END RSA PRIVATE KEY-----\n";
        assert!(is_encrypted(pkcs8) && is_encrypted(legacy));
        assert!(!is_encrypted(
            b"-----BEGIN PRIVATE KEY-----\nMIIF\n-----END PRIVATE KEY-----\n"
        ));
    }

    #[test]
    fn sni_names() {
        let exact = SniName::parse("API.Example.com.").unwrap();
        assert_eq!(exact, SniName::Exact("api.example.com".into()));
        assert!(exact.matches("api.example.com"));
        let wild = SniName::parse("*.example.com").unwrap();
        assert!(wild.matches("a.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("a.b.example.com"));
        assert!(!wild.matches("xexample.com"));
        for bad in [
            "",
            "*",
            "a.*.com",
            "*x.example.com",
            "127.0.0.1",
            "bad name",
        ] {
            assert!(SniName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn upstream_sni() {
        assert!(check_upstream_sni("api.openai.com").is_ok());
        assert!(check_upstream_sni("127.0.0.1").is_ok());
        assert!(check_upstream_sni("").is_err());
        assert!(check_upstream_sni("a b").is_err());
    }

    #[test]
    fn pem_without_certificates_is_refused() {
        assert!(pem_certificates(b"hello").is_err());
    }
}
