//! The supervisor: the one owner of every long-running background task (the queue's
//! workers and callback delivery, the rate-limit sweeper, the SIGHUP reloader, later the
//! event sources).
//!
//! A service is started under a name and a key naming what it depends on (a queue, a
//! broker connection). [`Supervisor::ensure`] is called after start-up and after every
//! reload: a service already running for the same key is left alone, one whose key changed
//! is told to stop (it finishes what it is doing) and started again, so a reload never
//! leaves a service running against something that is gone, or missing for something new.
//! [`Supervisor::shutdown`] stops them all and waits for them, up to a deadline.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

struct Service {
    name: String,
    key: u64,
    stop: watch::Sender<bool>,
    handle: JoinHandle<()>,
}

/// Owns the background services; see the module documentation.
#[derive(Default)]
pub struct Supervisor {
    services: Mutex<Vec<Service>>,
    /// Services told to stop by a reload, still finishing.
    retiring: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.running()).finish()
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor::default()
    }

    /// Runs service `name` for `key` unless it already runs for that key. `start` gets a
    /// receiver that turns `true` when the service must stop; it should then finish its
    /// current work and return.
    pub fn ensure<F, Fut>(&self, name: impl Into<String>, key: u64, start: F)
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let name = name.into();
        let mut services = lock(&self.services);
        if let Some(i) = services.iter().position(|s| s.name == name) {
            if services[i].key == key && !services[i].handle.is_finished() {
                return;
            }
            let old = services.remove(i);
            tracing::info!(service = %name, "restarting: what it depends on changed");
            let _ = old.stop.send(true);
            lock(&self.retiring).push(old.handle);
        }
        let (stop, rx) = watch::channel(false);
        let handle = tokio::spawn(start(rx));
        services.push(Service {
            name,
            key,
            stop,
            handle,
        });
    }

    /// Tells service `name` to stop, if it runs; it finishes in the background.
    pub fn stop(&self, name: &str) {
        let mut services = lock(&self.services);
        if let Some(i) = services.iter().position(|s| s.name == name) {
            let old = services.remove(i);
            let _ = old.stop.send(true);
            lock(&self.retiring).push(old.handle);
        }
    }

    /// The names of the services running now.
    pub fn running(&self) -> Vec<String> {
        lock(&self.services)
            .iter()
            .filter(|s| !s.handle.is_finished())
            .map(|s| s.name.clone())
            .collect()
    }

    /// Stops every service whose name starts with `prefix` and is not in `keep` (a reload
    /// removed what it served).
    pub fn retain(&self, prefix: &str, keep: &[String]) {
        let gone: Vec<String> = lock(&self.services)
            .iter()
            .filter(|s| s.name.starts_with(prefix) && !keep.contains(&s.name))
            .map(|s| s.name.clone())
            .collect();
        for name in gone {
            tracing::info!(service = %name, "stopping: no longer configured");
            self.stop(&name);
        }
    }

    /// Stops every service and waits for them to finish, up to `grace`; what has not
    /// finished by then is aborted.
    pub async fn shutdown(&self, grace: Duration) {
        let services: Vec<Service> = lock(&self.services).drain(..).collect();
        let mut handles: Vec<JoinHandle<()>> = lock(&self.retiring).drain(..).collect();
        for s in services {
            let _ = s.stop.send(true);
            handles.push(s.handle);
        }
        let deadline = tokio::time::Instant::now() + grace;
        for mut h in handles {
            if tokio::time::timeout_at(deadline, &mut h).await.is_err() {
                tracing::warn!("a background service did not stop within the drain timeout");
                h.abort();
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    async fn service(
        starts: Arc<AtomicUsize>,
        stops: Arc<AtomicUsize>,
        mut stop: watch::Receiver<bool>,
    ) {
        starts.fetch_add(1, Ordering::SeqCst);
        let _ = stop.wait_for(|s| *s).await;
        stops.fetch_add(1, Ordering::SeqCst);
    }

    #[tokio::test]
    async fn restarts_only_when_the_key_changes_and_drains_everything() {
        let sup = Supervisor::new();
        let (starts, stops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        for key in [1, 1, 2] {
            let (a, b) = (starts.clone(), stops.clone());
            sup.ensure("svc", key, move |rx| service(a, b, rx));
            tokio::task::yield_now().await;
        }
        let (a, b) = (starts.clone(), stops.clone());
        sup.ensure("other", 0, move |rx| service(a, b, rx));
        assert_eq!(sup.running().len(), 2);
        sup.shutdown(Duration::from_secs(5)).await;
        // Started for key 1, restarted for key 2, plus the other: three starts, all stopped.
        assert_eq!(starts.load(Ordering::SeqCst), 3);
        assert_eq!(stops.load(Ordering::SeqCst), 3);
        assert!(sup.running().is_empty());
    }
}
