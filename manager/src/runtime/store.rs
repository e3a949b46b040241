//! Where pod and container records live: one JSON file per record, and a copy in memory that
//! readers take snapshots of.
//!
//! Every change goes to disk first and to memory only once the file is written, so what a
//! reader sees has always survived a crash, and a failed write changes nothing. Changes to one
//! record are serialized (one writer at a time per record); the file I/O runs on the blocking
//! pool, so a slow disk delays the writer of that record, not crustd's async workers.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::error::{ManagerError, Result};
use crate::images::store::write_atomically;

/// What a store keeps.
pub trait Record: Clone + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What kind of record this is, for messages ("pod", "container").
    const KIND: &'static str;
    /// The record's id, which names its file.
    fn id(&self) -> &str;
}

/// Told of every stored change of a record: (before, after); None before an insert and
/// after a remove. It runs once the change is on disk and in memory, while that record's
/// writer is still held, so the changes of one record reach it in the order they happened.
/// It must not block: it runs on crustd's request paths.
pub type Observer<R> = Box<dyn Fn(Option<&R>, Option<&R>) + Send + Sync>;

/// The records of one kind.
pub struct Store<R> {
    dir: PathBuf,
    records: Mutex<HashMap<String, R>>,
    writers: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Signalled after every change, so waiters can re-check their condition.
    changes: watch::Sender<()>,
    /// Told of every change once set (records loaded at open are not changes).
    observer: OnceLock<Observer<R>>,
}

impl<R> std::fmt::Debug for Store<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl<R: Record> Store<R> {
    /// Opens (creating) `dir` and loads every readable record in it; unreadable files are
    /// logged and left alone.
    pub fn open(dir: PathBuf) -> Result<Self> {
        fs::create_dir_all(&dir)
            .map_err(|e| ManagerError::io(format!("create {}", dir.display()), e))?;
        let mut records = HashMap::new();
        let entries = fs::read_dir(&dir)
            .map_err(|e| ManagerError::io(format!("read {}", dir.display()), e))?;
        for path in entries.flatten().map(|entry| entry.path()) {
            if path.extension().is_none_or(|ext| ext != "json") {
                // A temporary file of a write cut short by a crash.
                let _ = fs::remove_file(&path);
                continue;
            }
            match read_record::<R>(&path) {
                Ok(record) => {
                    records.insert(record.id().to_string(), record);
                }
                Err(e) => log::warn!("ignoring {} record {}: {e}", R::KIND, path.display()),
            }
        }
        Ok(Self {
            dir,
            records: Mutex::new(records),
            writers: Mutex::new(HashMap::new()),
            changes: watch::Sender::new(()),
            observer: OnceLock::new(),
        })
    }

    /// Sets the one observer of this store's changes; a second one is refused (false).
    pub fn observe(&self, observer: Observer<R>) -> bool {
        self.observer.set(observer).is_ok()
    }

    fn announce(&self, before: Option<&R>, after: Option<&R>) {
        self.changes.send_replace(());
        if let Some(observer) = self.observer.get() {
            observer(before, after);
        }
    }

    fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn writer(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        Arc::clone(lock(&self.writers).entry(id.to_string()).or_default())
    }

    fn not_found(id: &str) -> ManagerError {
        ManagerError::NotFound(format!("{} {} not found", R::KIND, super::shown(id)))
    }

    /// A snapshot of record `id`.
    pub fn get(&self, id: &str) -> Option<R> {
        lock(&self.records).get(id).cloned()
    }

    /// Snapshots of the records `keep` selects.
    pub fn select(&self, keep: impl Fn(&R) -> bool) -> Vec<R> {
        lock(&self.records)
            .values()
            .filter(|r| keep(r))
            .cloned()
            .collect()
    }

    /// The ids of every record.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.records).keys().cloned().collect()
    }

    /// The full id `id` names: itself, or the one record whose id starts with it.
    pub fn resolve(&self, id: &str) -> Result<Option<String>> {
        if id.is_empty() {
            return Err(ManagerError::InvalidArgument(format!(
                "no {} id given",
                R::KIND
            )));
        }
        let records = lock(&self.records);
        if records.contains_key(id) {
            return Ok(Some(id.to_string()));
        }
        let mut matches = records.keys().filter(|candidate| candidate.starts_with(id));
        match (matches.next(), matches.next()) {
            (None, _) => Ok(None),
            (Some(one), None) => Ok(Some(one.clone())),
            (Some(_), Some(_)) => Err(ManagerError::InvalidArgument(format!(
                "{} id prefix {} is ambiguous",
                R::KIND,
                super::shown(id)
            ))),
        }
    }

    /// Adds a new record: on disk, then in memory.
    pub async fn insert(&self, record: R) -> Result<()> {
        let id = record.id().to_string();
        let writer = self.writer(&id);
        let _writing = writer.lock().await;
        self.write(&id, &record).await?;
        lock(&self.records).insert(id, record.clone());
        self.announce(None, Some(&record));
        Ok(())
    }

    /// Changes record `id` with `change`: the changed record is written to disk, and only then
    /// replaces the one in memory. Returns what `change` returned.
    pub async fn update<T>(&self, id: &str, change: impl FnOnce(&mut R) -> T) -> Result<T> {
        let writer = self.writer(id);
        let _writing = writer.lock().await;
        let before = self.get(id).ok_or_else(|| Self::not_found(id))?;
        let mut record = before.clone();
        let result = change(&mut record);
        self.write(id, &record).await?;
        lock(&self.records).insert(id.to_string(), record.clone());
        self.announce(Some(&before), Some(&record));
        Ok(result)
    }

    /// Forgets record `id`: its file, then its memory. Removing a missing record is fine.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let writer = self.writer(id);
        {
            let _writing = writer.lock().await;
            let path = self.path(id);
            blocking(move || match fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    Err(ManagerError::io(format!("remove {}", path.display()), e))
                }
                _ => Ok(()),
            })
            .await?;
            let removed = lock(&self.records).remove(id);
            if removed.is_some() {
                self.announce(removed.as_ref(), None);
            } else {
                self.changes.send_replace(());
            }
        }
        lock(&self.writers).remove(id);
        Ok(())
    }

    /// A receiver that sees every change to any record of this store.
    pub fn changes(&self) -> watch::Receiver<()> {
        self.changes.subscribe()
    }

    async fn write(&self, id: &str, record: &R) -> Result<()> {
        let json = serde_json::to_vec(record)
            .map_err(|e| ManagerError::io("encode record", io::Error::other(e)))?;
        let path = self.path(id);
        blocking(move || write_atomically(&path, &json)).await
    }
}

fn read_record<R: DeserializeOwned>(path: &Path) -> io::Result<R> {
    let bytes = fs::read(path)?;
    serde_json::from_slice(&bytes).map_err(io::Error::other)
}

/// Runs blocking file work on tokio's blocking pool.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| ManagerError::io("blocking task", io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        id: String,
        text: String,
    }

    impl Record for Note {
        const KIND: &'static str = "note";
        fn id(&self) -> &str {
            &self.id
        }
    }

    fn note(id: &str, text: &str) -> Note {
        Note {
            id: id.into(),
            text: text.into(),
        }
    }

    #[tokio::test]
    async fn changes_reach_disk_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<Note>::open(dir.path().join("notes")).unwrap();
        store.insert(note("a1", "first")).await.unwrap();
        let old = store
            .update("a1", |n| std::mem::replace(&mut n.text, "second".into()))
            .await
            .unwrap();
        assert_eq!(old, "first");
        store.insert(note("b2", "other")).await.unwrap();
        store.remove("b2").await.unwrap();
        store.remove("b2").await.expect("removing twice is fine");
        // A temporary file left by a crashed write is swept at open.
        fs::write(dir.path().join("notes/.tmpXYZ"), b"{").unwrap();
        let reopened = Store::<Note>::open(dir.path().join("notes")).unwrap();
        assert_eq!(reopened.ids(), vec!["a1".to_string()]);
        assert_eq!(reopened.get("a1").unwrap().text, "second");
        assert!(!dir.path().join("notes/.tmpXYZ").exists());
    }

    #[tokio::test]
    async fn a_failed_write_changes_nothing_in_memory() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<Note>::open(dir.path().join("notes")).unwrap();
        store.insert(note("a1", "kept")).await.unwrap();
        // The directory goes away: the next write fails.
        fs::remove_dir_all(dir.path().join("notes")).unwrap();
        let error = store.update("a1", |n| n.text = "lost".into()).await;
        assert!(matches!(error, Err(ManagerError::Io { .. })), "{error:?}");
        assert_eq!(store.get("a1").unwrap().text, "kept");
    }

    #[tokio::test]
    async fn a_file_that_cannot_be_removed_keeps_the_record() {
        let dir = tempfile::tempdir().unwrap();
        let notes = dir.path().join("notes");
        let store = Store::<Note>::open(notes.clone()).unwrap();
        store.insert(note("a1", "kept")).await.unwrap();
        // A directory where the record's file was: removing it fails with EISDIR.
        fs::remove_file(notes.join("a1.json")).unwrap();
        fs::create_dir(notes.join("a1.json")).unwrap();
        let error = store.remove("a1").await;
        assert!(matches!(error, Err(ManagerError::Io { .. })), "{error:?}");
        assert_eq!(store.get("a1").unwrap().text, "kept", "tried again later");
    }

    #[tokio::test]
    async fn updating_a_missing_record_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<Note>::open(dir.path().join("notes")).unwrap();
        let missing = store.update("zz", |_| ()).await;
        assert!(
            matches!(missing, Err(ManagerError::NotFound(_))),
            "{missing:?}"
        );
    }

    #[tokio::test]
    async fn ids_resolve_exactly_or_by_a_unique_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<Note>::open(dir.path().join("notes")).unwrap();
        for id in ["abc123", "abd456", "ab"] {
            store.insert(note(id, "")).await.unwrap();
        }
        assert_eq!(store.resolve("abc").unwrap().as_deref(), Some("abc123"));
        assert_eq!(store.resolve("ab").unwrap().as_deref(), Some("ab"));
        assert_eq!(store.resolve("zz").unwrap(), None);
        assert!(matches!(
            store.resolve(""),
            Err(ManagerError::InvalidArgument(_))
        ));
        store.remove("ab").await.unwrap();
        assert!(matches!(
            store.resolve("ab"),
            Err(ManagerError::InvalidArgument(_))
        ));
    }

    #[tokio::test]
    async fn every_change_is_announced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<Note>::open(dir.path().join("notes")).unwrap();
        let mut changes = store.changes();
        store.insert(note("a1", "")).await.unwrap();
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        store.update("a1", |n| n.text = "x".into()).await.unwrap();
        assert!(changes.has_changed().unwrap());
        changes.borrow_and_update();
        store.remove("a1").await.unwrap();
        assert!(changes.has_changed().unwrap());
    }

    #[tokio::test]
    async fn the_observer_sees_each_stored_change_with_before_and_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<Note>::open(dir.path().join("notes")).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        assert!(store.observe(Box::new(move |before, after| {
            let text = |n: Option<&Note>| n.map(|n| n.text.clone());
            lock(&log).push((text(before), text(after)));
        })));
        assert!(!store.observe(Box::new(|_, _| {})), "one observer");
        store.insert(note("a1", "x")).await.unwrap();
        store.update("a1", |n| n.text = "y".into()).await.unwrap();
        store.remove("a1").await.unwrap();
        store.remove("a1").await.unwrap();
        let _ = store.update("a1", |n| n.text = "z".into()).await;
        let some = |t: &str| Some(t.to_string());
        assert_eq!(
            *lock(&seen),
            [(None, some("x")), (some("x"), some("y")), (some("y"), None)],
            "a missing record changes nothing"
        );
    }

    #[tokio::test]
    async fn select_snapshots_the_records_it_keeps() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::<Note>::open(dir.path().join("notes")).unwrap();
        for id in ["a1", "a2", "b1"] {
            store.insert(note(id, id)).await.unwrap();
        }
        let mut kept: Vec<String> = store
            .select(|n| n.text.starts_with('a'))
            .into_iter()
            .map(|n| n.id)
            .collect();
        kept.sort();
        assert_eq!(kept, ["a1", "a2"]);
        assert!(store.select(|_| false).is_empty());
    }
}
