//! The I/O seam of the message log: every byte the log reads or writes goes
//! through [`Backend`] and [`BackendFile`], so tests can swap the disk for
//! memory, inject failed writes and fsyncs, and simulate power loss.
//!
//! The traits are shaped after redb's `StorageBackend`: positional reads
//! and writes, `set_len`, `sync_data`, plus the few directory operations a
//! segmented log needs (list, remove, and a directory fsync that makes file
//! creations and removals durable).
//!
//! # Layout
//! - [`FileBackend`]: `std::fs`, the one used in production.
//! - [`MemoryBackend`]: an in-memory file system for fast tests.
//! - [`CrashBackend`]: memory with a synced and a pending image per file
//!   and per directory; fault injection and [`CrashBackend::crash`].

mod crash;
mod memory;

use std::cell::Cell;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub use crash::CrashBackend;
pub use memory::MemoryBackend;

/// A file system as the message log sees it.
///
/// Creating or removing a file is durable only after [`Backend::sync_dir`]
/// on its directory; data written to a file is durable only after
/// [`BackendFile::sync_data`]. The log relies on both and on nothing else.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Opens a file for reading and writing; creates it (empty) when
    /// `create` is true and it does not exist.
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn BackendFile>>;
    /// The paths of the regular files directly inside `dir`, in no
    /// particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>>;
    /// Removes a file.
    fn remove(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its parents if missing.
    fn create_dir_all(&self, dir: &Path) -> io::Result<()>;
    /// Makes the creations and removals of files in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
}

/// An open file of a [`Backend`].
pub trait BackendFile: Send + fmt::Debug {
    /// The file's current length in bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file is empty.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Reads up to `buf.len()` bytes at `offset`; returns how many were
    /// read, 0 at or past the end of the file.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes all of `data` at `offset`, extending the file if needed.
    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Truncates or extends (with zeros) the file to `len` bytes.
    fn set_len(&mut self, len: u64) -> io::Result<()>;
    /// Makes everything written so far durable (`fdatasync`).
    fn sync_data(&mut self) -> io::Result<()>;
}

/// Reads exactly `buf.len()` bytes at `offset`, or fails with
/// [`io::ErrorKind::UnexpectedEof`].
pub(crate) fn read_exact_at(file: &dyn BackendFile, offset: u64, buf: &mut [u8]) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(offset + done as u64, &mut buf[done..]) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The real file system, through `std::fs`.
///
/// Positional I/O is done with a seek followed by a read or write: it is
/// portable, and the log writes sequentially, so a write almost never
/// needs the seek (the handle remembers where the cursor is).
#[derive(Debug, Default, Clone, Copy)]
pub struct FileBackend;

impl FileBackend {
    /// The file-system backend.
    pub fn new() -> Self {
        Self
    }
}

impl Backend for FileBackend {
    fn open(&self, path: &Path, create: bool) -> io::Result<Box<dyn BackendFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Box::new(StdFile {
            file,
            cursor: Cell::new(None),
        }))
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                out.push(entry.path());
            }
        }
        Ok(out)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn create_dir_all(&self, dir: &Path) -> io::Result<()> {
        fs::create_dir_all(dir)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        // On Unix a directory is opened like a file and fsynced; Windows
        // has no equivalent (NTFS journals directory changes itself).
        #[cfg(unix)]
        {
            File::open(dir)?.sync_all()
        }
        #[cfg(not(unix))]
        {
            let _ = dir;
            Ok(())
        }
    }
}

#[derive(Debug)]
struct StdFile {
    file: File,
    /// Where the OS cursor is, when known (a `Cell` because a read, which
    /// takes `&self`, moves it too).
    cursor: Cell<Option<u64>>,
}

impl BackendFile for StdFile {
    fn len(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        // `&File` implements Read and Seek; the write path re-seeks when
        // the cursor is unknown.
        self.cursor.set(None);
        let mut f = &self.file;
        f.seek(SeekFrom::Start(offset))?;
        f.read(buf)
    }

    fn write_all_at(&mut self, offset: u64, data: &[u8]) -> io::Result<()> {
        if self.cursor.get() != Some(offset) {
            self.cursor.set(None);
            self.file.seek(SeekFrom::Start(offset))?;
        }
        // Unknown until the write is known to have completed.
        self.cursor.set(None);
        self.file.write_all(data)?;
        self.cursor.set(Some(offset + data.len() as u64));
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.file.sync_data()
    }
}
