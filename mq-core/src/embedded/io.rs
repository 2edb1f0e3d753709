//! Every change the store makes to its files goes through here, so that a test can record
//! them and build the image a power loss would leave: per file only what was fsynced.
//!
//! In production this is a thin wrapper over `std::fs` with one relaxed atomic load per call.
//! A [`Recorder`] registered for a data directory (feature `testkit`) is told of every
//! completed change below that directory, in completion order; [`Recorder::image`] then
//! replays them into a fresh directory as of any point, keeping unsynced writes only
//! optionally and torn.

#![cfg_attr(not(any(test, feature = "testkit")), allow(dead_code))]

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

/// Whether any recorder is registered: the fast path skips the registry.
static RECORDING: AtomicBool = AtomicBool::new(false);
/// Recorders by the directory they watch.
static RECORDERS: RwLock<Vec<(PathBuf, Arc<Recorder>)>> = RwLock::new(Vec::new());

/// One completed change to a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IoOp {
    /// The file was created (empty) if it did not exist.
    Create(PathBuf),
    /// Bytes written at an offset.
    Write(PathBuf, u64, Vec<u8>),
    /// The file's length set.
    SetLen(PathBuf, u64),
    /// The file's data forced to disk.
    Sync(PathBuf),
    /// The file removed.
    Remove(PathBuf),
    /// The file renamed.
    Rename(PathBuf, PathBuf),
}

/// The changes made below one directory, in the order they completed.
#[derive(Debug)]
pub struct Recorder {
    root: PathBuf,
    ops: Mutex<Vec<IoOp>>,
}

impl Recorder {
    /// Starts recording every change below `root` (until [`stop`](Self::stop)).
    pub fn start(root: &Path) -> Arc<Recorder> {
        let rec = Arc::new(Recorder {
            root: root.to_owned(),
            ops: Mutex::new(Vec::new()),
        });
        RECORDERS.write().push((root.to_owned(), rec.clone()));
        RECORDING.store(true, Ordering::Release);
        rec
    }

    /// Stops recording.
    pub fn stop(self: &Arc<Self>) {
        let mut all = RECORDERS.write();
        all.retain(|(_, r)| !Arc::ptr_eq(r, self));
        RECORDING.store(!all.is_empty(), Ordering::Release);
    }

    /// How many changes were recorded so far: a point in time that [`image`](Self::image)
    /// can cut at.
    pub fn len(&self) -> usize {
        self.ops.lock().len()
    }

    /// Whether nothing was recorded yet.
    pub fn is_empty(&self) -> bool {
        self.ops.lock().is_empty()
    }

    /// The recorded changes.
    pub fn ops(&self) -> Vec<IoOp> {
        self.ops.lock().clone()
    }

    /// Writes into `into` what the disk holds after a power loss right after the first `cut`
    /// changes, when the directory started empty: per file, what was synced. With
    /// `unsynced = Some((k, keep))`, the first `k` changes made after a file's last sync
    /// survive as well (the page cache wrote some back), the last of them cut to `keep` of
    /// its bytes (a torn write). File creation, removal and rename count as durable at once
    /// (the store syncs the directory right after each rename).
    pub fn image(&self, cut: usize, unsynced: Option<(usize, f64)>, into: &Path) -> io::Result<()> {
        use std::collections::BTreeMap;
        #[derive(Default)]
        struct State {
            durable: Vec<u8>,
            pending: Vec<IoOp>,
        }
        fn apply(data: &mut Vec<u8>, op: &IoOp, keep: f64) {
            match op {
                IoOp::Write(_, at, bytes) => {
                    let n = ((bytes.len() as f64) * keep).round() as usize;
                    let bytes = &bytes[..n.min(bytes.len())];
                    let end = *at as usize + bytes.len();
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[*at as usize..end].copy_from_slice(bytes);
                }
                IoOp::SetLen(_, len) => data.resize(*len as usize, 0),
                _ => {}
            }
        }
        let ops = self.ops.lock();
        let mut files: BTreeMap<PathBuf, State> = BTreeMap::new();
        for op in ops.iter().take(cut) {
            match op {
                IoOp::Create(p) => {
                    files.entry(p.clone()).or_default();
                }
                IoOp::Write(p, ..) | IoOp::SetLen(p, _) => {
                    files.entry(p.clone()).or_default().pending.push(op.clone());
                }
                IoOp::Sync(p) => {
                    let s = files.entry(p.clone()).or_default();
                    let pending = std::mem::take(&mut s.pending);
                    for op in &pending {
                        apply(&mut s.durable, op, 1.0);
                    }
                }
                IoOp::Remove(p) => {
                    files.remove(p);
                }
                IoOp::Rename(from, to) => {
                    if let Some(s) = files.remove(from) {
                        files.insert(to.clone(), s);
                    }
                }
            }
        }
        for (path, state) in files {
            let Ok(rel) = path.strip_prefix(&self.root) else {
                continue;
            };
            let mut data = state.durable;
            if let Some((k, keep)) = unsynced {
                let n = k.min(state.pending.len());
                for (i, op) in state.pending.iter().take(n).enumerate() {
                    apply(&mut data, op, if i + 1 == n { keep } else { 1.0 });
                }
            }
            let target = into.join(rel);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            fs::write(target, data)?;
        }
        Ok(())
    }
}

fn record(path: &Path, op: impl FnOnce() -> IoOp) {
    if !RECORDING.load(Ordering::Acquire) {
        return;
    }
    let recorders = RECORDERS.read();
    for (root, rec) in recorders.iter() {
        if path.starts_with(root) {
            rec.ops.lock().push(op());
            return;
        }
    }
}

/// Opens a file for reading and writing, creating it if `create`.
pub(crate) fn open(path: &Path, create: bool) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)?;
    if create {
        record(path, || IoOp::Create(path.to_owned()));
    }
    Ok(file)
}

/// Creates (or empties) a file for writing.
pub(crate) fn create_new(path: &Path) -> io::Result<File> {
    let file = File::create(path)?;
    record(path, || IoOp::Create(path.to_owned()));
    record(path, || IoOp::SetLen(path.to_owned(), 0));
    Ok(file)
}

/// Writes all of `buf` at `offset`.
pub(crate) fn write_at(file: &File, path: &Path, buf: &[u8], offset: u64) -> io::Result<()> {
    file.write_all_at(buf, offset)?;
    record(path, || IoOp::Write(path.to_owned(), offset, buf.to_vec()));
    Ok(())
}

/// Sets the file's length.
pub(crate) fn set_len(file: &File, path: &Path, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    record(path, || IoOp::SetLen(path.to_owned(), len));
    Ok(())
}

/// Forces the file's data (and its length) to disk.
pub(crate) fn sync(file: &File, path: &Path) -> io::Result<()> {
    file.sync_data()?;
    record(path, || IoOp::Sync(path.to_owned()));
    Ok(())
}

/// Removes a file.
pub(crate) fn remove(path: &Path) -> io::Result<()> {
    fs::remove_file(path)?;
    record(path, || IoOp::Remove(path.to_owned()));
    Ok(())
}

/// Renames a file.
pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    record(to, || IoOp::Rename(from.to_owned(), to.to_owned()));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_keeps_what_was_synced() {
        let dir = tempfile::tempdir().unwrap();
        let rec = Recorder::start(dir.path());
        let a = dir.path().join("a");
        let f = open(&a, true).unwrap();
        write_at(&f, &a, b"hello", 0).unwrap();
        sync(&f, &a).unwrap();
        write_at(&f, &a, b" world", 5).unwrap();
        let tmp = dir.path().join("b.tmp");
        let t = create_new(&tmp).unwrap();
        write_at(&t, &tmp, b"new", 0).unwrap();
        sync(&t, &tmp).unwrap();
        rename(&tmp, &dir.path().join("b")).unwrap();
        let cut = rec.len();
        write_at(&f, &a, b"!", 11).unwrap();
        rec.stop();

        let img = tempfile::tempdir().unwrap();
        rec.image(cut, None, img.path()).unwrap();
        assert_eq!(fs::read(img.path().join("a")).unwrap(), b"hello");
        assert_eq!(fs::read(img.path().join("b")).unwrap(), b"new");
        assert!(!img.path().join("b.tmp").exists());

        let torn = tempfile::tempdir().unwrap();
        rec.image(cut, Some((1, 0.5)), torn.path()).unwrap();
        assert_eq!(fs::read(torn.path().join("a")).unwrap(), b"hello wo");
    }
}
