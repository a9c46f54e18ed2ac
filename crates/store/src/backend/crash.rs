//! A memory file system that remembers what reached the "disk", so tests
//! can pull the plug at any point, and that fails on request.
//!
//! Every file has two images: `pending` (what reads see) and `synced`
//! (what survives a crash); [`BackendFile::sync_data`] copies the first
//! into the second. The directory has two listings too: file creations and
//! removals survive a crash only once [`Backend::sync_dir`] was called on
//! the directory, as on a POSIX file system. [`CrashBackend::crash`] throws
//! away everything not synced and invalidates every open handle, exactly
//! what `kill -9` followed by a power cut does.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use super::memory::{not_found, parent_of, read_at, write_at};
use super::{Backend, BackendFile};

/// A memory backend with crash simulation and fault injection, for tests.
///
/// Clones share the same files, but a clone belongs to the "process" that
/// made it: after [`CrashBackend::crash`], every clone made before it and
/// every file it opened fail, as a dead process does nothing more. (A log
/// whose writer thread is still running after the crash cannot touch what
/// "the disk" now holds.) Clone again to open the log after a crash.
#[derive(Debug, Default)]
pub struct CrashBackend {
    shared: Arc<Shared>,
    generation: u64,
}

impl Clone for CrashBackend {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            generation: self.shared.state.lock().generation,
        }
    }
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Signalled when held syncs are released.
    released: Condvar,
}

#[derive(Debug, Default)]
struct State {
    /// Bumped by every crash: handles of an older generation fail.
    generation: u64,
    dirs: BTreeSet<PathBuf>,
    /// The directory listing as the running process sees it.
    current: BTreeMap<PathBuf, u64>,
    /// The directory listing as of the last `sync_dir`.
    durable: BTreeMap<PathBuf, u64>,
    nodes: HashMap<u64, Node>,
    next_node: u64,
    faults: Faults,
    syncs: u64,
    held: usize,
}

#[derive(Debug, Default)]
struct Faults {
    fail_write: bool,
    tear_write: Option<usize>,
    fail_sync: bool,
    hold_syncs: bool,
}

#[derive(Debug, Default)]
struct Node {
    pending: Vec<u8>,
    synced: Vec<u8>,
    /// Lowest offset changed since the last sync (`usize::MAX`: none).
    dirty_from: usize,
}

impl Node {
    fn new() -> Self {
        Self {
            dirty_from: usize::MAX,
            ..Self::default()
        }
    }

    fn sync(&mut self) {
        let keep = self
            .dirty_from
            .min(self.synced.len())
            .min(self.pending.len());
        self.synced.truncate(keep);
        self.synced.extend_from_slice(&self.pending[keep..]);
        self.dirty_from = usize::MAX;
    }

    /// What the disk holds after a crash that persisted `extra` bytes of
    /// the unsynced region past the synced image, when the pending image
    /// only extends the synced one (the log only appends).
    fn crash(&mut self, extra: usize) {
        let extends =
            self.dirty_from >= self.synced.len() && self.pending.len() >= self.synced.len();
        if extends && extra > 0 {
            let end = self
                .pending
                .len()
                .min(self.synced.len().saturating_add(extra));
            let from = self.synced.len();
            self.synced.extend_from_slice(&self.pending[from..end]);
        }
        self.pending.clone_from(&self.synced);
        self.dirty_from = usize::MAX;
    }
}

fn crashed() -> io::Error {
    io::Error::other("simulated crash: this handle belongs to a dead process")
}

impl CrashBackend {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// The state, unless this handle's process has crashed.
    fn live(&self) -> io::Result<parking_lot::MutexGuard<'_, State>> {
        let state = self.shared.state.lock();
        if state.generation == self.generation {
            Ok(state)
        } else {
            Err(crashed())
        }
    }

    /// The next file write fails without writing anything.
    pub fn fail_next_write(&self) {
        self.shared.state.lock().faults.fail_write = true;
    }

    /// The next file write writes only its first `keep` bytes, then fails:
    /// a torn write.
    pub fn tear_next_write(&self, keep: usize) {
        self.shared.state.lock().faults.tear_write = Some(keep);
    }

    /// The next `sync_data` fails and syncs nothing.
    pub fn fail_next_sync(&self) {
        self.shared.state.lock().faults.fail_sync = true;
    }

    /// From now on `sync_data` blocks until [`CrashBackend::release_syncs`]
    /// (a disk that stalls), so a test can fill the log's queue.
    pub fn hold_syncs(&self) {
        self.shared.state.lock().faults.hold_syncs = true;
    }

    /// Lets held and future syncs through.
    pub fn release_syncs(&self) {
        self.shared.state.lock().faults.hold_syncs = false;
        self.shared.released.notify_all();
    }

    /// How many `sync_data` calls are blocked by [`CrashBackend::hold_syncs`].
    pub fn held_syncs(&self) -> usize {
        self.shared.state.lock().held
    }

    /// How many `sync_data` calls succeeded.
    pub fn sync_count(&self) -> u64 {
        self.shared.state.lock().syncs
    }

    /// Power loss: everything not synced is gone, files created or removed
    /// since the last directory sync are back to how they were, and every
    /// open handle fails from now on.
    pub fn crash(&self) {
        self.crash_keeping_unsynced(0);
    }

    /// Like [`CrashBackend::crash`], but up to `bytes` of each file's
    /// unsynced appended data did reach the disk before the power went
    /// out: the way a torn tail is made.
    pub fn crash_keeping_unsynced(&self, bytes: usize) {
        let mut state = self.shared.state.lock();
        state.generation += 1;
        state.faults = Faults::default();
        state.current = state.durable.clone();
        let live: BTreeSet<u64> = state.durable.values().copied().collect();
        state.nodes.retain(|id, _| live.contains(id));
        for node in state.nodes.values_mut() {
            node.crash(bytes);
        }
        drop(state);
        self.shared.released.notify_all();
    }

    /// A copy of a file's contents as the running process sees them.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let state = self.shared.state.lock();
        let id = state.current.get(path)?;
        state.nodes.get(id).map(|n| n.pending.clone())
    }

    /// Overwrites bytes of an existing file in both its images (durable
    /// corruption, as bit rot). Returns false if the file does not exist.
    pub fn patch_file(&self, path: &Path, offset: u64, data: &[u8]) -> bool {
        let mut state = self.shared.state.lock();
        let Some(id) = state.current.get(path).copied() else {
            return false;
        };
        match state.nodes.get_mut(&id) {
            Some(node) => {
                write_at(&mut node.pending, offset, data);
                write_at(&mut node.synced, offset, data);
                true
            }
            None => false,
        }
    }

    /// Every file's path as the running process sees them, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.shared.state.lock().current.keys().cloned().collect()
    }
}

impl Backend for CrashBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn BackendFile>> {
        let mut state = self.live()?;
        let node = match state.current.get(path) {
            Some(id) => *id,
            None if create => {
                if !state.dirs.contains(&parent_of(path)) {
                    return Err(not_found(path));
                }
                let id = state.next_node;
                state.next_node += 1;
                state.nodes.insert(id, Node::new());
                state.current.insert(path.to_path_buf(), id);
                id
            }
            None => return Err(not_found(path)),
        };
        Ok(Box::new(CrashFile {
            shared: self.shared.clone(),
            node,
            generation: self.generation,
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let state = self.live()?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(state
            .current
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match self.live()?.current.remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        // Directories themselves are taken to be durable at once: the log
        // creates its directory once, before anything else.
        let mut state = self.live()?;
        for ancestor in dir.ancestors() {
            state.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        let mut state = self.live()?;
        if !state.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let current: Vec<(PathBuf, u64)> = state
            .current
            .iter()
            .filter(|(p, _)| in_dir(p))
            .map(|(p, id)| (p.clone(), *id))
            .collect();
        state.durable.retain(|p, _| !in_dir(p));
        state.durable.extend(current);
        Ok(())
    }
}

#[derive(Debug)]
struct CrashFile {
    shared: Arc<Shared>,
    node: u64,
    generation: u64,
}

impl CrashFile {
    fn with_node<T>(&self, f: impl FnOnce(&mut State, u64) -> io::Result<T>) -> io::Result<T> {
        let mut state = self.shared.state.lock();
        if state.generation != self.generation {
            return Err(crashed());
        }
        f(&mut state, self.node)
    }
}

fn node_mut(state: &mut State, id: u64) -> io::Result<&mut Node> {
    state
        .nodes
        .get_mut(&id)
        .ok_or_else(|| io::Error::other("file node vanished"))
}

impl BackendFile for CrashFile {
    fn len(&self) -> io::Result<u64> {
        self.with_node(|state, id| Ok(node_mut(state, id)?.pending.len() as u64))
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        self.with_node(|state, id| Ok(read_at(&node_mut(state, id)?.pending, offset, buf)))
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        self.with_node(|state, id| {
            if std::mem::take(&mut state.faults.fail_write) {
                return Err(io::Error::other("injected write failure"));
            }
            let torn = state.faults.tear_write.take();
            let node = node_mut(state, id)?;
            let at = usize::try_from(offset).unwrap_or(usize::MAX);
            node.dirty_from = node.dirty_from.min(at);
            match torn {
                Some(keep) => {
                    write_at(&mut node.pending, offset, &data[..keep.min(data.len())]);
                    Err(io::Error::other("injected torn write"))
                }
                None => {
                    write_at(&mut node.pending, offset, data);
                    Ok(())
                }
            }
        })
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.with_node(|state, id| {
            let node = node_mut(state, id)?;
            let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
            node.dirty_from = node.dirty_from.min(len);
            node.pending.resize(len, 0);
            Ok(())
        })
    }

    fn sync_data(&mut self) -> io::Result<()> {
        let mut state = self.shared.state.lock();
        while state.faults.hold_syncs && state.generation == self.generation {
            state.held += 1;
            self.shared.released.wait(&mut state);
            state.held -= 1;
        }
        if state.generation != self.generation {
            return Err(crashed());
        }
        if std::mem::take(&mut state.faults.fail_sync) {
            return Err(io::Error::other("injected fsync failure"));
        }
        node_mut(&mut state, self.node)?.sync();
        state.syncs += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(b: &CrashBackend, path: &str, data: &[u8], sync: bool) -> Box<dyn BackendFile> {
        let mut f = b.open(Path::new(path), true).expect("open");
        let len = f.len().expect("len");
        f.write_all_at(len, data).expect("write");
        if sync {
            f.sync_data().expect("sync");
        }
        f
    }

    #[test]
    fn crash_keeps_only_what_was_synced() {
        let b = CrashBackend::new();
        b.create_dir_all(Path::new("/d")).expect("dir");
        let mut f = write(&b, "/d/a", b"synced", true);
        f.write_all_at(6, b"+pending").expect("write");
        write(&b, "/d/unlisted", b"data", true); // directory never synced
        b.sync_dir(Path::new("/d")).expect("sync dir");
        write(&b, "/d/late", b"data", true); // created after the dir sync
        b.remove(Path::new("/d/a")).expect("remove"); // removal not synced

        b.crash_keeping_unsynced(3);
        assert!(f.write_all_at(0, b"x").is_err(), "old handles are dead");
        assert!(b.list(Path::new("/d")).is_err(), "so is the old backend");
        let after = b.clone();
        let mut names = after.list(Path::new("/d")).expect("list");
        names.sort();
        assert_eq!(
            names,
            vec![PathBuf::from("/d/a"), PathBuf::from("/d/unlisted")]
        );
        assert_eq!(b.read_file(Path::new("/d/a")).expect("a"), b"synced+pe");
    }

    #[test]
    fn faults_fire_once() {
        let b = CrashBackend::new();
        b.create_dir_all(Path::new("/d")).expect("dir");
        let mut f = b.open(Path::new("/d/f"), true).expect("open");
        b.fail_next_sync();
        assert!(f.sync_data().is_err());
        assert!(f.sync_data().is_ok());
        b.tear_next_write(2);
        assert!(f.write_all_at(0, b"abcdef").is_err());
        assert_eq!(b.read_file(Path::new("/d/f")).expect("f"), b"ab");
        b.fail_next_write();
        assert!(f.write_all_at(2, b"cd").is_err());
        assert!(f.write_all_at(2, b"cd").is_ok());
        assert_eq!(b.sync_count(), 1);
    }
}
