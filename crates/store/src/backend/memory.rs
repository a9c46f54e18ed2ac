//! An in-memory file system: fast, and every write is "durable" at once.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{Backend, BackendFile};

/// Files held in memory. Clones share the same files, so a test can keep
/// one handle to inspect what the log wrote through another.
///
/// Nothing is ever lost here: use [`super::CrashBackend`] to simulate
/// crashes and faults.
#[derive(Debug, Default, Clone)]
pub struct MemoryBackend {
    fs: Arc<Mutex<MemFs>>,
}

#[derive(Debug, Default)]
struct MemFs {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, Arc<Mutex<Vec<u8>>>>,
}

impl MemoryBackend {
    /// An empty file system.
    pub fn new() -> Self {
        Self::default()
    }

    /// A copy of a file's contents, if it exists.
    pub fn read_file(&self, path: &Path) -> Option<Vec<u8>> {
        let fs = self.fs.lock();
        fs.files.get(path).map(|f| f.lock().clone())
    }

    /// Overwrites bytes of an existing file (extending it if needed), to
    /// plant corruption or garbage in tests. Returns false if the file
    /// does not exist.
    pub fn patch_file(&self, path: &Path, offset: u64, data: &[u8]) -> bool {
        let fs = self.fs.lock();
        match fs.files.get(path) {
            Some(f) => {
                write_at(&mut f.lock(), offset, data);
                true
            }
            None => false,
        }
    }

    /// Every file's path, sorted.
    pub fn files(&self) -> Vec<PathBuf> {
        self.fs.lock().files.keys().cloned().collect()
    }
}

/// Writes `data` at `offset` into `buf`, zero-filling any gap.
pub(super) fn write_at(buf: &mut Vec<u8>, offset: u64, data: &[u8]) {
    let offset = usize::try_from(offset).unwrap_or(usize::MAX);
    let end = offset.saturating_add(data.len());
    if buf.len() < end {
        buf.resize(end, 0);
    }
    buf[offset..end].copy_from_slice(data);
}

/// Reads from `buf` at `offset` into `out`; returns the count read.
pub(super) fn read_at(buf: &[u8], offset: u64, out: &mut [u8]) -> usize {
    let Ok(offset) = usize::try_from(offset) else {
        return 0;
    };
    if offset >= buf.len() {
        return 0;
    }
    let n = out.len().min(buf.len() - offset);
    out[..n].copy_from_slice(&buf[offset..offset + n]);
    n
}

pub(super) fn not_found(path: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such file or directory", path.display()),
    )
}

pub(super) fn parent_of(path: &Path) -> PathBuf {
    path.parent().map(Path::to_path_buf).unwrap_or_default()
}

impl Backend for MemoryBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn BackendFile>> {
        let mut fs = self.fs.lock();
        let data = match fs.files.get(path) {
            Some(data) => data.clone(),
            None if create => {
                if !fs.dirs.contains(&parent_of(path)) {
                    return Err(not_found(path));
                }
                let data = Arc::new(Mutex::new(Vec::new()));
                fs.files.insert(path.to_path_buf(), data.clone());
                data
            }
            None => return Err(not_found(path)),
        };
        Ok(Box::new(MemFile { data }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let fs = self.fs.lock();
        if !fs.dirs.contains(dir) {
            return Err(not_found(dir));
        }
        Ok(fs
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        match self.fs.lock().files.remove(path) {
            Some(_) => Ok(()),
            None => Err(not_found(path)),
        }
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        let mut fs = self.fs.lock();
        for ancestor in dir.ancestors() {
            fs.dirs.insert(ancestor.to_path_buf());
        }
        Ok(())
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        if self.fs.lock().dirs.contains(dir) {
            Ok(())
        } else {
            Err(not_found(dir))
        }
    }
}

/// An open memory file; it keeps its bytes alive after a removal, as an
/// unlinked file does on Unix.
#[derive(Debug)]
struct MemFile {
    data: Arc<Mutex<Vec<u8>>>,
}

impl BackendFile for MemFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.data.lock().len() as u64)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        Ok(read_at(&self.data.lock(), offset, buf))
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        write_at(&mut self.data.lock(), offset, data);
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::other("length too large"))?;
        self.data.lock().resize(len, 0);
        Ok(())
    }

    fn sync_data(&mut self) -> io::Result<()> {
        Ok(())
    }
}
