//! TLS termination on listeners: each TLS listener serves its certificates through a resolver
//! that picks one by SNI from an atomically swapped set, so that new certificates apply to new
//! handshakes while established connections carry on untouched. They reload on SIGHUP and when
//! their files change (see `reloader.rs`); a set that fails to load keeps the previous one and
//! logs why.

use super::reloader::Reloadable;
use crate::config::tls::ListenerCerts;
use crate::config::{Config, ListenerTls};
use arc_swap::ArcSwap;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::ALPN;
use pingora::tls::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::sync::{Arc, Mutex};

/// Serves a listener's certificates by SNI (the default one when the client sent no name or a
/// name no entry lists).
#[derive(Debug)]
pub struct SniResolver {
    certs: ArcSwap<ListenerCerts>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.certs.load().choose(client_hello.server_name()).clone())
    }
}

/// One TLS listener: where its files are and the resolver its handshakes use.
struct TlsListener {
    /// `listen[i].tls`, for log lines.
    key: String,
    files: ListenerTls,
    resolver: Arc<SniResolver>,
    /// The state of the files (fingerprint or read error) that last failed to load, so that a
    /// broken file is reported once, not on every poll.
    failed: Mutex<Option<String>>,
}

/// The TLS listeners of a config, with their certificates loaded.
pub struct TlsListeners {
    /// Indexed like `config.listen`; `None` for cleartext listeners.
    listeners: Vec<Option<Arc<TlsListener>>>,
}

impl TlsListeners {
    pub fn load(config: &Config) -> Result<TlsListeners, String> {
        let listeners = config
            .listen
            .iter()
            .enumerate()
            .map(|(i, listener)| {
                let Some(files) = &listener.tls else {
                    return Ok(None);
                };
                let key = format!("listen[{i}].tls");
                let certs = ListenerCerts::load(files)
                    .map_err(|e| format!("{key}.{}: {}", e.key, e.message))?;
                Ok(Some(Arc::new(TlsListener {
                    key,
                    files: files.clone(),
                    resolver: Arc::new(SniResolver {
                        certs: ArcSwap::from_pointee(certs),
                    }),
                    failed: Mutex::new(None),
                })))
            })
            .collect::<Result<_, String>>()?;
        Ok(TlsListeners { listeners })
    }

    /// Pingora's TLS settings for listener `index` (TLS 1.2 and 1.3, ALPN `h2` then
    /// `http/1.1`), or `None` when it is a cleartext listener.
    pub fn settings(&self, index: usize) -> Result<Option<TlsSettings>, String> {
        let Some(listener) = self.listeners.get(index).and_then(Option::as_ref) else {
            return Ok(None);
        };
        // The paths are unused: the resolver serves the certificates.
        let mut settings =
            TlsSettings::intermediate("", "").map_err(|e| format!("{}: {e}", listener.key))?;
        settings.set_cert_resolver(listener.resolver.clone());
        settings.set_alpn(ALPN::H2H1);
        Ok(Some(settings))
    }

    /// The listeners whose certificates SIGHUP and file changes reload.
    pub fn reloadables(&self) -> Vec<Arc<dyn Reloadable>> {
        self.listeners
            .iter()
            .flatten()
            .map(|l| l.clone() as Arc<dyn Reloadable>)
            .collect()
    }
}

impl Reloadable for TlsListener {
    fn reload(&self, on_signal: bool) {
        TlsListener::reload(self, !on_signal);
    }
}

impl TlsListener {
    /// Loads the certificates again: always on SIGHUP, only when the files changed on a poll.
    /// A failure keeps the certificates in use and is logged (once per state of the files when
    /// polling).
    fn reload(&self, only_changed: bool) {
        let on_disk = ListenerCerts::fingerprint(&self.files);
        if only_changed {
            match &on_disk {
                Err(e) => {
                    self.report_failure(e.to_string(), &e.key, &e.message, true);
                    return;
                }
                Ok(now) if *now == self.resolver.certs.load().fingerprint => {
                    *self.failed.lock().unwrap() = None;
                    return;
                }
                Ok(now) if self.failed.lock().unwrap().as_deref() == Some(&hex::encode(now)) => {
                    return;
                }
                Ok(_) => {}
            }
        }
        match ListenerCerts::load(&self.files) {
            Ok(certs) => {
                let names = certs.by_name.len();
                self.resolver.certs.store(Arc::new(certs));
                *self.failed.lock().unwrap() = None;
                log::warn!(
                    "{}: certificates reloaded ({names} SNI names); new handshakes use them",
                    self.key
                );
            }
            Err(e) => {
                let state = match &on_disk {
                    Ok(fingerprint) => hex::encode(fingerprint),
                    Err(read) => read.to_string(),
                };
                self.report_failure(state, &e.key, &e.message, only_changed);
            }
        }
    }

    fn report_failure(&self, state: String, key: &str, message: &str, once: bool) {
        let mut failed = self.failed.lock().unwrap();
        if !once || failed.as_deref() != Some(state.as_str()) {
            log::error!(
                "{}.{key}: certificates not reloaded, the previous ones stay in use: {message}",
                self.key
            );
        }
        *failed = Some(state);
    }
}
