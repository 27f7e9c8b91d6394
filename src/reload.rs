//! Reload: the ingest listener's certificate and key, client CA bundle and CRLs, JWT keys and
//! JWKS file, header secrets, signing keys and principals are read again, without a restart,
//! on SIGHUP and (with `reload.watch`) when one of their files changes.
//!
//! A reload re-reads the config file the server was started from (when it was started from
//! one) and applies its `[ingest.tls]`, `[auth]` and `[[principals]]`; other settings need a
//! restart. Each part is built whole from the files on disk, then swapped in atomically: a
//! request or connection already under way keeps what it started with, later ones see the new
//! material. A part that fails to build (unreadable or malformed file, key that does not match
//! its certificate, principal naming a stream without a schema) leaves the previous one in force;
//! the failure is logged with its reason and counted.
//!
//! Metrics: `sluice_reloads_total{what}` and `sluice_reload_failures_total{what}`, `what` one of
//! `config` (the config file), `tls`, `auth`.
//!
//! File changes are seen by watching the directories of the files (so that files replaced by
//! rename, as Kubernetes does with its `..data` link, are seen too) and are debounced: a reload
//! starts once no change has been seen for `reload.debounce_ms`.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::Deserialize;
use tokio::sync::Notify;

use crate::accept::AppState;
use crate::accept::tls;
use crate::auth::Auth;
use crate::config::Config;

/// `[reload]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    /// Reload when a watched file changes (SIGHUP always reloads).
    #[serde(default = "default_watch")]
    pub watch: bool,
    /// Quiet time after the last file change before reloading, in milliseconds (writers that
    /// replace several files, or write one in pieces, finish first).
    #[serde(default = "default_debounce_ms")]
    pub debounce_ms: u64,
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: default_watch(),
            debounce_ms: default_debounce_ms(),
        }
    }
}

fn default_watch() -> bool {
    true
}
fn default_debounce_ms() -> u64 {
    500
}

/// Longest accepted `reload.debounce_ms`.
pub const MAX_DEBOUNCE_MS: u64 = 60_000;

impl ReloadConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.debounce_ms == 0 || self.debounce_ms > MAX_DEBOUNCE_MS {
            return Err(format!(
                "reload.debounce_ms: must be from 1 to {MAX_DEBOUNCE_MS}"
            ));
        }
        Ok(())
    }
}

/// What set a reload off (a log field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    Signal,
    FileChange,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "SIGHUP",
            Trigger::FileChange => "file change",
        }
    }
}

/// Reloads the reloadable parts of a running server's state.
pub struct Reloader {
    state: Arc<AppState>,
    /// The config of the last successful reload (or of start-up): read again from
    /// `Config::source` when it has one, else reused as it is (its files are still re-read).
    config: Mutex<Config>,
}

impl Reloader {
    pub fn new(state: Arc<AppState>, config: Config) -> Reloader {
        Reloader {
            state,
            config: Mutex::new(config),
        }
    }

    /// Every file a reload reads: the config file, TLS and auth files. Absolute, so they
    /// compare with the paths of file events.
    pub fn files(&self) -> Vec<PathBuf> {
        let config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        watched_files(&config)
    }

    /// Reads everything again and swaps in each part that builds; returns whether every part
    /// did. Blocking (file reads, key parsing): call it off the async workers.
    pub fn reload(&self, trigger: Trigger) -> bool {
        let mut current = self.config.lock().unwrap_or_else(|e| e.into_inner());
        let config = match &current.source {
            Some(path) => match Config::load(path) {
                Ok(config) => {
                    if let Err(message) = self.check_streams(&config) {
                        failed("config", trigger, &format!("{}: {message}", path.display()));
                        return false;
                    }
                    succeeded("config", trigger);
                    config
                }
                Err(err) => {
                    failed("config", trigger, &format!("{err:#}"));
                    return false;
                }
            },
            None => current.clone(),
        };
        let mut all_good = true;
        match (&self.state.tls, &config.ingest.tls) {
            (Some(shared), Some(tls_config)) => match tls::server_config(tls_config) {
                Ok(server_config) => {
                    shared.store(server_config);
                    succeeded("tls", trigger);
                }
                Err(err) => {
                    failed("tls", trigger, &err.to_string());
                    all_good = false;
                }
            },
            (None, None) => {}
            _ => {
                failed(
                    "tls",
                    trigger,
                    "ingest.tls: switching between TLS and plain HTTP needs a restart",
                );
                all_good = false;
            }
        }
        let previous = self.state.auth.load();
        match Auth::reloaded(&config, &previous) {
            Ok(auth) => {
                self.state.auth.store(Arc::new(auth));
                succeeded("auth", trigger);
            }
            Err(message) => {
                failed("auth", trigger, &message);
                all_good = false;
            }
        }
        *current = config;
        all_good
    }

    /// Every stream a principal names must have a schema (the set is fixed until restart).
    fn check_streams(&self, config: &Config) -> Result<(), String> {
        for (i, principal) in config.principals.iter().enumerate() {
            for stream in &principal.streams {
                if stream != "*" && self.state.pipeline.stream(stream).is_none() {
                    return Err(format!("principals[{i}].streams: {stream:?} has no schema"));
                }
            }
        }
        Ok(())
    }
}

fn succeeded(what: &'static str, trigger: Trigger) {
    metrics::counter!("sluice_reloads_total", "what" => what).increment(1);
    tracing::info!(what, trigger = trigger.as_str(), "reloaded");
}

fn failed(what: &'static str, trigger: Trigger, reason: &str) {
    metrics::counter!("sluice_reload_failures_total", "what" => what).increment(1);
    tracing::warn!(
        what,
        trigger = trigger.as_str(),
        error = reason,
        "reload failed; the previous one stays in force"
    );
}

/// The files of `config` a reload reads, made absolute.
fn watched_files(config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config.source.iter().cloned().collect();
    if let Some(tls) = &config.ingest.tls {
        files.extend(tls.files());
    }
    files.extend(Auth::files(config));
    files
        .into_iter()
        .map(|file| std::path::absolute(&file).unwrap_or(file))
        .collect()
}

/// Whether a file event may change what a reload reads: writes, creations, removals, renames
/// and attribute changes of a watched file, or of a `..`-prefixed entry (the link Kubernetes
/// swaps to update mounted secrets). Opening and reading, which a reload itself does, do not.
fn is_relevant(event: &notify::Event, watched: &HashSet<PathBuf>) -> bool {
    let kind_matters = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    };
    kind_matters
        && event.paths.iter().any(|path| {
            watched.contains(path)
                || path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with(".."))
        })
}

/// Watches the directories of `reloader`'s files; `changed` is notified on each relevant
/// event. The watcher runs until it is dropped.
struct FileWatch {
    watcher: RecommendedWatcher,
    /// The files events are matched against (replaced after each reload).
    files: Arc<Mutex<HashSet<PathBuf>>>,
    /// The directories being watched.
    dirs: HashSet<PathBuf>,
}

impl FileWatch {
    fn new(changed: Arc<Notify>) -> notify::Result<FileWatch> {
        let files: Arc<Mutex<HashSet<PathBuf>>> = Arc::default();
        let matched = files.clone();
        let watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| match event {
                Ok(event) => {
                    let watched = matched.lock().unwrap_or_else(|e| e.into_inner());
                    if is_relevant(&event, &watched) {
                        changed.notify_one();
                    }
                }
                Err(err) => tracing::warn!(error = %err, "watching files for reload"),
            })?;
        Ok(FileWatch {
            watcher,
            files,
            dirs: HashSet::new(),
        })
    }

    /// Watches the directories of `files` (and stops watching those no longer needed).
    fn set_files(&mut self, files: Vec<PathBuf>) {
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|file| file.parent().map(Path::to_path_buf))
            .collect();
        for dir in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(dir);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(err) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), error = %err, "cannot watch for reload");
            }
        }
        self.dirs = dirs;
        *self.files.lock().unwrap_or_else(|e| e.into_inner()) = files.into_iter().collect();
    }
}

/// SIGHUP, caught from the moment [`Hangup::listen`] returns (until then the signal's default
/// action, ending the process, applies).
pub struct Hangup {
    #[cfg(unix)]
    signal: Option<tokio::signal::unix::Signal>,
}

impl Hangup {
    /// Starts catching SIGHUP; must run inside the tokio runtime.
    pub fn listen() -> Hangup {
        #[cfg(unix)]
        {
            let signal = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            {
                Ok(signal) => Some(signal),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot catch SIGHUP; reload on file changes only");
                    None
                }
            };
            Hangup { signal }
        }
        #[cfg(not(unix))]
        Hangup {}
    }

    /// The next SIGHUP (never, where it cannot be caught).
    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some(signal) = self.signal.as_mut() {
            signal.recv().await;
            return;
        }
        std::future::pending::<()>().await
    }
}

/// Reloads on SIGHUP and, with `reload.watch`, on file changes, until `stop` completes.
pub async fn run(
    reloader: Arc<Reloader>,
    settings: ReloadConfig,
    mut hangup: Hangup,
    stop: impl std::future::Future<Output = ()>,
) {
    let changed = Arc::new(Notify::new());
    let mut watch = if settings.watch {
        match FileWatch::new(changed.clone()) {
            Ok(mut watch) => {
                watch.set_files(reloader.files());
                Some(watch)
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot watch files; reload on SIGHUP only");
                None
            }
        }
    } else {
        None
    };
    let debounce = Duration::from_millis(settings.debounce_ms);
    let mut stop = std::pin::pin!(stop);
    loop {
        let trigger = tokio::select! {
            () = &mut stop => return,
            () = hangup.recv() => Trigger::Signal,
            () = changed.notified() => Trigger::FileChange,
        };
        if trigger == Trigger::FileChange {
            // Wait for a quiet spell.
            while tokio::time::timeout(debounce, changed.notified())
                .await
                .is_ok()
            {}
        }
        let task_reloader = reloader.clone();
        match tokio::task::spawn_blocking(move || task_reloader.reload(trigger)).await {
            Ok(_) => {}
            Err(err) => tracing::error!(error = %err, "reload task failed"),
        }
        if let Some(watch) = watch.as_mut() {
            watch.set_files(reloader.files());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind};

    fn event(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn only_changes_to_watched_files_count() {
        let watched: HashSet<PathBuf> = [PathBuf::from("/etc/sluice/server.crt")].into();
        let write = EventKind::Modify(ModifyKind::Any);
        assert!(is_relevant(
            &event(write, "/etc/sluice/server.crt"),
            &watched
        ));
        assert!(!is_relevant(
            &event(write, "/etc/sluice/other.txt"),
            &watched
        ));
        assert!(is_relevant(
            &event(EventKind::Create(CreateKind::Any), "/etc/sluice/..data"),
            &watched
        ));
        assert!(is_relevant(
            &event(
                EventKind::Access(AccessKind::Close(AccessMode::Write)),
                "/etc/sluice/server.crt"
            ),
            &watched
        ));
        // A reload reading the file must not set off another reload.
        for access in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
        ] {
            assert!(!is_relevant(
                &event(EventKind::Access(access), "/etc/sluice/server.crt"),
                &watched
            ));
        }
    }

    #[test]
    fn debounce_is_bounded_and_the_key_named() {
        let mut config = ReloadConfig::default();
        assert_eq!(config.validate(), Ok(()));
        config.debounce_ms = 0;
        assert_eq!(
            config.validate().unwrap_err(),
            "reload.debounce_ms: must be from 1 to 60000"
        );
        let err = toml::from_str::<ReloadConfig>("wach = true").unwrap_err();
        assert!(err.to_string().contains("unknown field `wach`"), "{err}");
    }
}
