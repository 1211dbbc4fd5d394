//! Unpacks an artifact tarball (plain or gzip) into a release directory without ever writing outside it.
//! Every entry is checked before anything is written: paths must stay inside the destination, no ancestor of a
//! written path may be a symlink, symlinks may only point inside, hard links only at files already unpacked,
//! and devices, FIFOs and unknown types are refused. Sizes are bounded (file data, entries, and the metadata
//! the tar reader buffers), so a hostile or corrupt artifact fails with an error, never with a broken host.
//! The first refused entry aborts the whole unpack; the caller deletes the half-filled directory.

use std::cell::Cell;
use std::ffi::OsStr;
use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use tar::EntryType;

/// Upper bounds for one unpack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Total bytes of regular-file data.
    pub max_bytes: u64,
    /// Entries in the archive, counting every header the reader yields (also skipped PAX global headers).
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 30,
            max_entries: 1_000_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// An entry was refused; the message names the entry and the reason.
    #[error("unsafe archive entry: {0}")]
    Unsafe(String),
    /// A limit of [`Limits`] (or the 4096-byte path limit) was exceeded.
    #[error("archive too big: {0}")]
    TooBig(String),
    /// Reading the archive (truncated, corrupt, bad gzip) or writing the destination failed.
    #[error("unpacking failed: {0}")]
    Io(String),
}

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unpacked {
    pub files: u64,
    pub dirs: u64,
    /// Symlinks and hard links.
    pub links: u64,
    /// Bytes of file data actually written.
    pub bytes: u64,
}

/// Longest accepted entry path, link target or symlink target, in bytes.
const MAX_PATH: usize = 4096;
/// Metadata the tar reader may consume between two entries (headers, PAX records, GNU long names, padding,
/// the skipped data of non-file entries). It also bounds what the reader buffers in memory for one long name.
const ENTRY_SLACK: u64 = 1 << 20;
/// Metadata allowed over the whole archive, on top of 4 KiB per allowed entry.
const META_SLACK: u64 = 64 << 20;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Unpacks a tar or gzip-compressed tar (detected by the gzip magic bytes 1f 8b, not by name) read from `src`
/// into `dest` (an existing, empty or partially filled directory). Later entries may overwrite earlier regular
/// files (layers are applied in order).
///
/// An existing file or symlink at an entry's path is unlinked before the entry is created, so nothing is ever
/// written through a symlink or into another hard link of the same inode. An existing directory is never
/// replaced by a non-directory (refused). Modes are the header's, masked with 0o777 (no setuid, setgid or
/// sticky); directories always keep u+rwx so the agent can fill and delete them, and their modes are applied
/// after the last entry. Symlink targets must be relative, and `..` may only lead them (`../../x`, never
/// `a/../x`) without climbing above `dest`. PAX local headers and GNU long names apply to the next entry; PAX
/// global headers are ignored; GNU sparse files are refused. Ownership is not restored. On any error `dest` is
/// left partially filled.
pub fn unpack(src: impl Read, dest: &Path, limits: &Limits) -> Result<Unpacked, UnpackError> {
    match fs::metadata(dest) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(UnpackError::Io(format!("{}: not a directory", dest.display()))),
        Err(e) => return Err(UnpackError::Io(format!("{}: {e}", dest.display()))),
    }
    let mut src = BufReader::with_capacity(64 << 10, src);
    let mut magic = [0u8; 2];
    let got = read_prefix(&mut src, &mut magic)
        .map_err(|e| UnpackError::Io(format!("reading the archive: {e}")))?;
    let prefixed = io::Cursor::new(magic[..got].to_vec()).chain(src);
    let budget = Budget::new(limits);
    if got == 2 && magic == GZIP_MAGIC {
        let reader = flate2::read::MultiGzDecoder::new(prefixed);
        Unpacker::new(dest, limits, budget.clone()).run(Metered {
            inner: reader,
            budget,
        })
    } else {
        Unpacker::new(dest, limits, budget.clone()).run(Metered {
            inner: prefixed,
            budget,
        })
    }
}

fn read_prefix(src: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match src.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Shared between the metered reader and the unpack loop: how many bytes of the (decompressed) tar stream
/// have been read, and up to where the reader may go.
#[derive(Clone)]
struct Budget {
    used: Rc<Cell<u64>>,
    allowed: Rc<Cell<u64>>,
    ceiling: u64,
    exceeded: Rc<Cell<bool>>,
}

impl Budget {
    fn new(limits: &Limits) -> Self {
        let ceiling = limits
            .max_bytes
            .saturating_add(limits.max_entries.saturating_mul(4096))
            .saturating_add(META_SLACK);
        Budget {
            used: Rc::new(Cell::new(0)),
            allowed: Rc::new(Cell::new(ENTRY_SLACK.min(ceiling))),
            ceiling,
            exceeded: Rc::new(Cell::new(false)),
        }
    }

    /// Called for each entry the reader yields: it may read `data` more bytes, plus the slack for the metadata
    /// up to the next entry.
    fn grant(&self, data: u64) {
        let allowed = self
            .used
            .get()
            .saturating_add(data)
            .saturating_add(ENTRY_SLACK)
            .min(self.ceiling);
        self.allowed.set(allowed);
    }
}

struct Metered<R> {
    inner: R,
    budget: Budget,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let used = self.budget.used.get().saturating_add(n as u64);
        self.budget.used.set(used);
        if used > self.budget.allowed.get() {
            self.budget.exceeded.set(true);
            return Err(io::Error::other("archive metadata exceeds the limit"));
        }
        Ok(n)
    }
}

/// A path inside `dest`, as validated components (no `.`, `..`, empty or `/`).
type Rel = Vec<Vec<u8>>;

struct Unpacker<'a> {
    dest: &'a Path,
    limits: &'a Limits,
    budget: Budget,
    done: Unpacked,
    entries: u64,
    /// Directory modes, applied once every entry is written so a read-only directory can still be filled.
    dir_modes: Vec<(PathBuf, u32)>,
}

impl<'a> Unpacker<'a> {
    fn new(dest: &'a Path, limits: &'a Limits, budget: Budget) -> Self {
        Unpacker {
            dest,
            limits,
            budget,
            done: Unpacked::default(),
            entries: 0,
            dir_modes: Vec::new(),
        }
    }

    fn run(mut self, reader: impl Read) -> Result<Unpacked, UnpackError> {
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| self.read_error(e, None))?;
        let mut last: Option<String> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| self.read_error(e, last.as_deref()))?;
            let name = show(&entry.path_bytes());
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(UnpackError::TooBig(format!(
                    "more than {} entries (at {name})",
                    self.limits.max_entries
                )));
            }
            self.entry(&mut entry, &name).map_err(|e| match e {
                UnpackError::Io(_) if self.budget.exceeded.get() => {
                    self.read_error(io::ErrorKind::Other.into(), Some(&name))
                }
                other => other,
            })?;
            last = Some(name);
        }
        for (path, mode) in &self.dir_modes {
            // A later entry cannot turn a directory into a symlink (refused), but check before following it.
            let meta = fs::symlink_metadata(path).map_err(|e| io_err(path, e))?;
            if meta.is_dir() {
                fs::set_permissions(path, Permissions::from_mode(*mode)).map_err(|e| io_err(path, e))?;
            }
        }
        Ok(self.done)
    }

    fn read_error(&self, e: io::Error, after: Option<&str>) -> UnpackError {
        let at = after.map(|n| format!(" after {n}")).unwrap_or_default();
        if self.budget.exceeded.get() {
            UnpackError::TooBig(format!(
                "too much archive metadata{at} (at most {ENTRY_SLACK} bytes between two entries, {} in all)",
                self.budget.ceiling
            ))
        } else {
            UnpackError::Io(format!("reading the archive{at}: {e}"))
        }
    }

    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>, name: &str) -> Result<(), UnpackError> {
        let kind = entry.header().entry_type();
        match kind {
            // Metadata for the archive as a whole (or a stray extension header the reader did not apply):
            // nothing to write. The tar crate applies PAX local headers and GNU long names to the next entry.
            EntryType::XGlobalHeader | EntryType::XHeader => {
                self.budget.grant(0);
                return Ok(());
            }
            EntryType::Regular | EntryType::Continuous | EntryType::Directory => {}
            EntryType::Symlink | EntryType::Link => {}
            other => {
                return Err(UnpackError::Unsafe(format!(
                    "{name}: entry type {} is not allowed",
                    type_name(other)
                )))
            }
        }
        let raw = entry.path_bytes().into_owned();
        let rel = relative(&raw).map_err(|(big, why)| refuse(big, format!("{name}: {why}")))?;
        // Old (pre-POSIX) archives mark directories with a trailing slash on a regular-file entry.
        let is_file = matches!(kind, EntryType::Regular | EntryType::Continuous);
        let is_dir = kind == EntryType::Directory || (is_file && raw.ends_with(b"/"));
        let mode = entry
            .header()
            .mode()
            .map_err(|e| UnpackError::Io(format!("{name}: bad mode: {e}")))?
            & 0o777;
        if is_dir {
            self.budget.grant(0);
            return self.directory(&rel, mode, name);
        }
        if rel.is_empty() {
            return Err(UnpackError::Unsafe(format!(
                "{name}: a non-directory entry names the destination itself"
            )));
        }
        if is_file {
            let path = self.prepare(&rel, name)?;
            return self.file(entry, &path, mode, name);
        }
        self.budget.grant(0);
        let target = entry
            .link_name_bytes()
            .map(|t| t.into_owned())
            .unwrap_or_default();
        if kind == EntryType::Symlink {
            check_symlink(&rel, &target)
                .map_err(|(big, why)| refuse(big, format!("{name}: symlink to {}: {why}", show(&target))))?;
            let path = self.prepare(&rel, name)?;
            std::os::unix::fs::symlink(OsStr::from_bytes(&target), &path).map_err(|e| io_err(&path, e))?;
        } else {
            let source = self.link_source(&rel, &target, name)?;
            let path = self.prepare(&rel, name)?;
            fs::hard_link(&source, &path).map_err(|e| io_err(&path, e))?;
        }
        self.done.links += 1;
        Ok(())
    }

    /// Checks (creating missing ones) the parents of `rel` and clears its final path: every parent must be a
    /// real directory, and an existing non-directory at the path is unlinked. Returns the absolute path.
    fn prepare(&self, rel: &Rel, name: &str) -> Result<PathBuf, UnpackError> {
        let Some((last, parents)) = rel.split_last() else {
            return Ok(self.dest.to_path_buf());
        };
        let parent = self.parents(parents, name, true)?;
        let path = parent.join(OsStr::from_bytes(last));
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => Err(UnpackError::Unsafe(format!(
                "{name}: exists as a directory, will not replace it"
            ))),
            Ok(_) => fs::remove_file(&path)
                .map_err(|e| io_err(&path, e))
                .map(|()| path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(path),
            Err(e) => Err(io_err(&path, e)),
        }
    }

    /// Walks `parents` below `dest`: each must be a real directory (never a symlink). Missing ones are
    /// created 0o755 when `create`, else they are an error.
    fn parents(&self, parents: &[Vec<u8>], name: &str, create: bool) -> Result<PathBuf, UnpackError> {
        let mut dir = self.dest.to_path_buf();
        for component in parents {
            dir.push(OsStr::from_bytes(component));
            match fs::symlink_metadata(&dir) {
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(UnpackError::Unsafe(format!(
                        "{name}: parent {} is a symlink",
                        show(component)
                    )))
                }
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    return Err(UnpackError::Unsafe(format!(
                        "{name}: parent {} is not a directory",
                        show(component)
                    )))
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                    make_dir(&dir, 0o755)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(UnpackError::Unsafe(format!(
                        "{name}: {} does not exist",
                        show(component)
                    )))
                }
                Err(e) => return Err(io_err(&dir, e)),
            }
        }
        Ok(dir)
    }

    fn directory(&mut self, rel: &Rel, mode: u32, name: &str) -> Result<(), UnpackError> {
        let Some((last, parents)) = rel.split_last() else {
            // "./": the destination itself. Its mode is the caller's business.
            return Ok(());
        };
        let path = self.parents(parents, name, true)?.join(OsStr::from_bytes(last));
        match fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(UnpackError::Unsafe(format!(
                    "{name}: exists as a file or symlink, will not replace it with a directory"
                )))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => make_dir(&path, 0o755)?,
            Err(e) => return Err(io_err(&path, e)),
        }
        self.dir_modes.push((path, mode | 0o700));
        self.done.dirs += 1;
        Ok(())
    }

    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        path: &Path,
        mode: u32,
        name: &str,
    ) -> Result<(), UnpackError> {
        let declared = entry.size();
        let max = self.limits.max_bytes;
        if self.done.bytes.saturating_add(declared) > max {
            return Err(UnpackError::TooBig(format!(
                "{name}: {declared} bytes would bring the file data over {max} bytes"
            )));
        }
        self.budget.grant(declared);
        let mut out = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| io_err(path, e))?;
        let mut buf = vec![0u8; 64 << 10];
        let mut written: u64 = 0;
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(UnpackError::Io(format!("{name}: reading the archive: {e}"))),
            };
            written += n as u64;
            if written > declared || self.done.bytes.saturating_add(written) > max {
                return Err(UnpackError::TooBig(format!(
                    "{name}: more data than its header declares or allowed"
                )));
            }
            out.write_all(&buf[..n]).map_err(|e| io_err(path, e))?;
        }
        if written != declared {
            return Err(UnpackError::Io(format!(
                "{name}: truncated archive ({written} of {declared} bytes)"
            )));
        }
        out.set_permissions(Permissions::from_mode(mode))
            .map_err(|e| io_err(path, e))?;
        if let Some(t) = entry
            .header()
            .mtime()
            .ok()
            .and_then(|s| SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(s)))
        {
            out.set_modified(t).map_err(|e| io_err(path, e))?;
        }
        self.done.files += 1;
        self.done.bytes += written;
        Ok(())
    }

    /// The file a hard link entry points at: an archive path, validated like entry paths, that must already
    /// be a regular file inside `dest` (reached through real directories only).
    fn link_source(&self, rel: &Rel, target: &[u8], name: &str) -> Result<PathBuf, UnpackError> {
        let shown = show(target);
        let to = relative(target)
            .map_err(|(big, why)| refuse(big, format!("{name}: hard link to {shown}: {why}")))?;
        let Some((last, parents)) = to.split_last() else {
            return Err(UnpackError::Unsafe(format!(
                "{name}: hard link to the destination itself"
            )));
        };
        if &to == rel {
            return Err(UnpackError::Unsafe(format!("{name}: hard link to itself")));
        }
        let source = self.parents(parents, name, false)?.join(OsStr::from_bytes(last));
        match fs::symlink_metadata(&source) {
            Ok(m) if m.file_type().is_file() => Ok(source),
            Ok(_) => Err(UnpackError::Unsafe(format!(
                "{name}: hard link to {shown}, which is not a regular file"
            ))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(UnpackError::Unsafe(format!(
                "{name}: hard link to {shown}, which is not (yet) in the archive"
            ))),
            Err(e) => Err(io_err(&source, e)),
        }
    }
}

/// What paths and link targets must not be: empty, over-long (`true` marks that refusal), NUL-carrying or
/// absolute.
fn shape_check(bytes: &[u8], target: bool) -> Result<(), (bool, &'static str)> {
    let pick = |for_target, for_path| if target { for_target } else { for_path };
    if bytes.is_empty() {
        return Err((false, pick("empty target", "empty path")));
    }
    if bytes.len() > MAX_PATH {
        return Err((
            true,
            pick("target longer than 4096 bytes", "path longer than 4096 bytes"),
        ));
    }
    if bytes.contains(&0) {
        return Err((false, pick("NUL in target", "NUL in path")));
    }
    if bytes.starts_with(b"/") {
        return Err((false, pick("absolute target", "absolute path")));
    }
    Ok(())
}

/// Checks a symlink target for the link at `rel`. Sound, not just lexical: `..` may only lead the target.
/// The link's directory and all its ancestors up to `dest` are real directories, so each leading `..` climbs
/// one real level, and is refused past `dest`. After the first normal component every step goes down, through
/// entries that are real or are links checked the same way. A `..` after a component is refused: that
/// component may be a symlink, and `..` would then climb from wherever it points.
fn check_symlink(rel: &Rel, target: &[u8]) -> Result<(), (bool, &'static str)> {
    shape_check(target, true)?;
    let depth = rel.len().saturating_sub(1);
    let mut ups = 0;
    let mut seen_normal = false;
    for c in target.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." if seen_normal => return Err((false, "`..` after a normal component")),
            b".." => {
                ups += 1;
                if ups > depth {
                    return Err((false, "climbs above the destination"));
                }
            }
            _ => seen_normal = true,
        }
    }
    Ok(())
}

/// Validates an archive path and splits it into components: `./` and repeated slashes are dropped; absolute,
/// empty, NUL-carrying, `..`-carrying and over-long paths are refused (`true` marks the length refusal).
fn relative(raw: &[u8]) -> Result<Rel, (bool, &'static str)> {
    shape_check(raw, false)?;
    let mut rel = Vec::new();
    for c in raw.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err((false, "`..` in path")),
            _ => rel.push(c.to_vec()),
        }
    }
    Ok(rel)
}

fn refuse(too_big: bool, message: String) -> UnpackError {
    if too_big {
        UnpackError::TooBig(message)
    } else {
        UnpackError::Unsafe(message)
    }
}

fn make_dir(path: &Path, mode: u32) -> Result<(), UnpackError> {
    fs::create_dir(path).map_err(|e| io_err(path, e))?;
    fs::set_permissions(path, Permissions::from_mode(mode)).map_err(|e| io_err(path, e))
}

fn io_err(path: &Path, e: io::Error) -> UnpackError {
    UnpackError::Io(format!("{}: {e}", path.display()))
}

/// An archive path for a message: quoted, control characters escaped, at most 200 characters.
fn show(raw: &[u8]) -> String {
    let text = String::from_utf8_lossy(raw);
    let cut: String = text.chars().take(200).collect();
    if cut.len() < text.len() {
        format!("{:?}…", cut)
    } else {
        format!("{:?}", cut)
    }
}

fn type_name(kind: EntryType) -> String {
    match kind {
        EntryType::Char => "character device".into(),
        EntryType::Block => "block device".into(),
        EntryType::Fifo => "FIFO".into(),
        EntryType::GNUSparse => "GNU sparse file".into(),
        EntryType::GNULongName | EntryType::GNULongLink => "stray GNU long name".into(),
        other => match other.as_byte() {
            b's' => "socket".into(),
            b if b.is_ascii_graphic() => format!("'{}'", b as char),
            b => format!("0x{b:02x}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::os::unix::fs::MetadataExt;

    /// A directory under the system temp dir, removed on drop. Holds `dest/`, so escapes land beside it.
    struct TempDir(crate::infra::scratch::TestDir);

    impl TempDir {
        fn new() -> Self {
            let root = crate::infra::scratch::TestDir::new("haul-unpack");
            fs::create_dir_all(root.path("dest")).expect("mkdir");
            TempDir(root)
        }
        fn dest(&self) -> PathBuf {
            self.0.path("dest")
        }
        /// Everything directly in the root, i.e. beside `dest`.
        fn beside(&self) -> BTreeSet<String> {
            fs::read_dir(&self.0 .0)
                .expect("read_dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        }
        fn assert_nothing_outside(&self) {
            assert_eq!(self.beside(), BTreeSet::from(["dest".to_string()]));
        }
    }

    /// A GNU header with raw name and link name bytes: nothing is validated, as in a hostile archive.
    fn raw_header(kind: EntryType, name: &[u8], link: &[u8], mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_cksum();
        h
    }

    enum E<'a> {
        File(&'a str, u32, &'a [u8]),
        Dir(&'a str, u32),
        Sym(&'a str, &'a str),
        Hard(&'a str, &'a str),
        Raw(EntryType, &'a str, &'a str),
    }

    fn tarball(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let (h, data): (tar::Header, &[u8]) = match *e {
                E::File(n, mode, data) => (
                    raw_header(EntryType::Regular, n.as_bytes(), b"", mode, data.len() as u64),
                    data,
                ),
                E::Dir(n, mode) => (raw_header(EntryType::Directory, n.as_bytes(), b"", mode, 0), b""),
                E::Sym(n, t) => (
                    raw_header(EntryType::Symlink, n.as_bytes(), t.as_bytes(), 0o777, 0),
                    b"",
                ),
                E::Hard(n, t) => (
                    raw_header(EntryType::Link, n.as_bytes(), t.as_bytes(), 0o644, 0),
                    b"",
                ),
                E::Raw(kind, n, t) => (raw_header(kind, n.as_bytes(), t.as_bytes(), 0o644, 0), b""),
            };
            b.append(&h, data).expect("append");
        }
        b.into_inner().expect("finish")
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(data).expect("gzip");
        enc.finish().expect("gzip")
    }

    fn mode_of(p: &Path) -> u32 {
        fs::symlink_metadata(p).expect("stat").mode() & 0o7777
    }

    fn tree() -> Vec<u8> {
        tarball(&[
            E::Dir("./", 0o755),
            E::Dir("./bin/", 0o755),
            E::File("./bin/app", 0o755, b"#!/bin/sh\necho hi\n"),
            E::File("etc/conf/app.toml", 0o640, b"port = 8080\n"),
            E::Sym("bin/run", "app"),
            E::Sym("etc/conf/app-link", "../../bin/app"),
            E::Hard("bin/app2", "./bin/app"),
        ])
    }

    fn check_tree(dest: &Path, got: Unpacked) {
        assert_eq!(
            got,
            Unpacked {
                files: 2,
                dirs: 1,
                links: 3,
                bytes: 30
            }
        );
        assert_eq!(
            fs::read(dest.join("bin/app")).expect("read"),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(mode_of(&dest.join("bin/app")), 0o755);
        assert_eq!(mode_of(&dest.join("etc/conf/app.toml")), 0o640);
        assert_eq!(mode_of(&dest.join("etc")), 0o755);
        assert_eq!(
            fs::read_link(dest.join("bin/run")).expect("link"),
            Path::new("app")
        );
        assert_eq!(
            fs::read(dest.join("etc/conf/app-link")).expect("through link"),
            b"#!/bin/sh\necho hi\n"
        );
        let (a, b) = (
            fs::metadata(dest.join("bin/app")).expect("a"),
            fs::metadata(dest.join("bin/app2")).expect("b"),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        let mtime = fs::metadata(dest.join("bin/app"))
            .expect("m")
            .modified()
            .expect("mtime");
        assert_eq!(mtime, SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
    }

    #[test]
    fn a_normal_tree_round_trips() {
        let t = TempDir::new();
        let got = unpack(&tree()[..], &t.dest(), &Limits::default()).expect("unpack");
        check_tree(&t.dest(), got);
        t.assert_nothing_outside();
    }

    #[test]
    fn gzip_is_detected_by_magic() {
        let t = TempDir::new();
        let got = unpack(&gzip(&tree())[..], &t.dest(), &Limits::default()).expect("unpack");
        check_tree(&t.dest(), got);
    }

    #[test]
    fn a_reader_that_returns_one_byte_at_a_time_works() {
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let t = TempDir::new();
        let data = gzip(&tree());
        let got = unpack(Trickle(&data), &t.dest(), &Limits::default()).expect("unpack");
        check_tree(&t.dest(), got);
    }

    #[test]
    fn long_names_and_pax_headers_are_applied_and_global_headers_ignored() {
        let long = format!("{}/file.txt", "d".repeat(150));
        let pax_long = format!("{}/pax.txt", "p".repeat(180));
        let mut b = tar::Builder::new(Vec::new());
        // A PAX global header, as `git archive` writes one.
        let record = b"52 comment=ed6ab5ab9fbb8eb1d7fed5b1bb5e1d1b1b1b1b1b\n";
        let mut g = tar::Header::new_ustar();
        g.set_entry_type(EntryType::XGlobalHeader);
        g.set_path("pax_global_header").expect("path");
        g.set_size(record.len() as u64);
        g.set_cksum();
        b.append(&g, &record[..]).expect("global");
        // GNU long name: the builder writes an `L` entry first.
        let mut h = tar::Header::new_gnu();
        h.set_size(4);
        h.set_mode(0o644);
        b.append_data(&mut h, &long, &b"long"[..]).expect("long");
        // A PAX local header carrying the path.
        let rec = format!(" path={pax_long}\n");
        let rec = format!("{}{rec}", rec.len() + (rec.len() + 3).to_string().len());
        let mut x = tar::Header::new_ustar();
        x.set_entry_type(EntryType::XHeader);
        x.set_path("PaxHeaders/x").expect("path");
        x.set_size(rec.len() as u64);
        x.set_cksum();
        b.append(&x, rec.as_bytes()).expect("pax");
        let mut f = tar::Header::new_ustar();
        f.set_path("short-name").expect("path");
        f.set_size(3);
        f.set_mode(0o600);
        f.set_cksum();
        b.append(&f, &b"pax"[..]).expect("file");
        let data = b.into_inner().expect("finish");

        let t = TempDir::new();
        let got = unpack(&data[..], &t.dest(), &Limits::default()).expect("unpack");
        assert_eq!((got.files, got.bytes), (2, 7));
        assert_eq!(fs::read(t.dest().join(&long)).expect("long"), b"long");
        assert_eq!(fs::read(t.dest().join(&pax_long)).expect("pax"), b"pax");
        assert!(!t.dest().join("short-name").exists());
        assert!(!t.dest().join("pax_global_header").exists());
    }

    #[test]
    fn later_layers_overwrite_files_without_writing_through_links() {
        let t = TempDir::new();
        let first = tarball(&[
            E::File("a", 0o644, b"one"),
            E::Hard("b", "a"),
            E::File("target", 0o644, b"keep"),
            E::Sym("s", "target"),
        ]);
        unpack(&first[..], &t.dest(), &Limits::default()).expect("first");
        let second = tarball(&[E::File("b", 0o600, b"two"), E::File("s", 0o644, b"replaced")]);
        unpack(&second[..], &t.dest(), &Limits::default()).expect("second");
        let d = t.dest();
        assert_eq!(
            fs::read(d.join("a")).expect("a"),
            b"one",
            "the other hard link is untouched"
        );
        assert_eq!(fs::read(d.join("b")).expect("b"), b"two");
        assert_eq!(mode_of(&d.join("b")), 0o600);
        assert_eq!(
            fs::read(d.join("target")).expect("t"),
            b"keep",
            "not written through the symlink"
        );
        assert!(fs::symlink_metadata(d.join("s")).expect("s").is_file());
    }

    #[test]
    fn setuid_setgid_and_sticky_bits_are_stripped() {
        let t = TempDir::new();
        let data = tarball(&[
            E::File("suid", 0o4755, b"x"),
            E::File("sgid", 0o2711, b"x"),
            E::Dir("tmp", 0o1777),
        ]);
        unpack(&data[..], &t.dest(), &Limits::default()).expect("unpack");
        assert_eq!(mode_of(&t.dest().join("suid")), 0o755);
        assert_eq!(mode_of(&t.dest().join("sgid")), 0o711);
        assert_eq!(mode_of(&t.dest().join("tmp")), 0o777);
    }

    #[test]
    fn a_read_only_directory_is_filled_then_keeps_owner_access() {
        let t = TempDir::new();
        let data = tarball(&[E::Dir("ro", 0o555), E::File("ro/f", 0o444, b"x")]);
        unpack(&data[..], &t.dest(), &Limits::default()).expect("unpack");
        assert_eq!(mode_of(&t.dest().join("ro")), 0o755);
        assert_eq!(mode_of(&t.dest().join("ro/f")), 0o444);
    }

    #[test]
    fn implicit_parents_are_0755() {
        let t = TempDir::new();
        let data = tarball(&[E::File("x/y/z", 0o600, b"")]);
        unpack(&data[..], &t.dest(), &Limits::default()).expect("unpack");
        assert_eq!(mode_of(&t.dest().join("x")), 0o755);
        assert_eq!(mode_of(&t.dest().join("x/y")), 0o755);
    }

    /// Unpacks `data` expecting an error; nothing may appear beside `dest`. Returns the error.
    fn refused(data: &[u8], limits: &Limits) -> UnpackError {
        let t = TempDir::new();
        fs::write(t.0.path("outside"), b"original").expect("outside");
        let err = unpack(data, &t.dest(), limits).expect_err("must be refused");
        assert_eq!(
            t.beside(),
            BTreeSet::from(["dest".to_string(), "outside".to_string()])
        );
        assert_eq!(fs::read(t.0.path("outside")).expect("outside"), b"original");
        assert_eq!(fs::metadata(t.0.path("outside")).expect("outside").nlink(), 1);
        err
    }

    fn assert_unsafe(entries: &[E], needle: &str) {
        match refused(&tarball(entries), &Limits::default()) {
            UnpackError::Unsafe(m) => assert!(m.contains(needle), "{m:?} should mention {needle:?}"),
            other => panic!("expected Unsafe, got {other:?}"),
        }
    }

    #[test]
    fn escaping_paths_are_refused() {
        assert_unsafe(&[E::File("../evil", 0o644, b"x")], "\"../evil\": `..` in path");
        assert_unsafe(
            &[E::File("a/../../evil", 0o644, b"x")],
            "\"a/../../evil\": `..` in path",
        );
        assert_unsafe(
            &[E::File("ok", 0o644, b"x"), E::File("/etc/evil", 0o644, b"x")],
            "absolute path",
        );
        assert_unsafe(&[E::Dir("../d", 0o755)], "`..` in path");
        assert_unsafe(&[E::File("", 0o644, b"x")], "empty path");
        assert_unsafe(&[E::File(".", 0o644, b"x")], "names the destination itself");
    }

    /// A file entry whose path comes from a PAX `path` record or a GNU long name, as raw bytes.
    fn extended_name(path: &[u8], gnu: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        if gnu {
            let mut name = path.to_vec();
            name.push(0);
            let h = raw_header(
                EntryType::GNULongName,
                b"././@LongLink",
                b"",
                0o644,
                name.len() as u64,
            );
            b.append(&h, &name[..]).expect("L");
        } else {
            let mut rec = b" path=".to_vec();
            rec.extend_from_slice(path);
            rec.push(b'\n');
            let len = rec.len() + (rec.len() + 3).to_string().len();
            let mut record = len.to_string().into_bytes();
            record.extend_from_slice(&rec);
            let mut x = tar::Header::new_ustar();
            x.set_entry_type(EntryType::XHeader);
            x.set_path("PaxHeaders/x").expect("path");
            x.set_size(record.len() as u64);
            x.set_cksum();
            b.append(&x, &record[..]).expect("x");
        }
        b.append(
            &raw_header(EntryType::Regular, b"harmless", b"", 0o644, 1),
            &b"x"[..],
        )
        .expect("file");
        b.into_inner().expect("tar")
    }

    #[test]
    fn escapes_hidden_in_long_names_and_pax_paths_are_refused() {
        for gnu in [true, false] {
            for (path, needle) in [
                (&b"../evil"[..], "`..` in path"),
                (b"/etc/evil", "absolute path"),
                (b"a/b/../../../evil", "`..` in path"),
                (b"a\0/../../evil", "NUL in path"),
            ] {
                match refused(&extended_name(path, gnu), &Limits::default()) {
                    UnpackError::Unsafe(m) => assert!(m.contains(needle), "{m:?} should mention {needle:?}"),
                    other => panic!("expected Unsafe, got {other:?}"),
                }
            }
        }
    }

    #[test]
    fn escaping_symlinks_are_refused() {
        assert_unsafe(&[E::Sym("link", "../../outside")], "climbs above the destination");
        assert_unsafe(
            &[E::Sym("a/b/link", "../../../outside")],
            "climbs above the destination",
        );
        assert_unsafe(
            &[E::Sym("link", "/etc")],
            "\"link\": symlink to \"/etc\": absolute target",
        );
        assert_unsafe(
            &[E::Sym("dir", ".."), E::File("dir/evil", 0o644, b"x")],
            "climbs above",
        );
        assert_unsafe(&[E::Sym("link", "")], "empty target");
        // `a` points at dest itself, so `a/..` would be dest's parent although it looks like dest.
        assert_unsafe(
            &[E::Sym("a", "."), E::Sym("b", "a/../outside")],
            "`..` after a normal component",
        );
    }

    #[test]
    fn writing_through_a_symlinked_parent_is_refused() {
        // Even when the link itself points inside, nothing is written through it.
        assert_unsafe(
            &[E::Sym("dir", "."), E::File("dir/evil", 0o644, b"x")],
            "parent \"dir\" is a symlink",
        );
        assert_unsafe(
            &[E::Sym("dir", "sub"), E::Dir("dir/x", 0o755)],
            "parent \"dir\" is a symlink",
        );
        assert_unsafe(
            &[E::File("f", 0o644, b""), E::File("f/g", 0o644, b"x")],
            "parent \"f\" is not a directory",
        );
    }

    #[test]
    fn escaping_hard_links_are_refused() {
        assert_unsafe(
            &[E::Hard("link", "../outside")],
            "hard link to \"../outside\": `..` in path",
        );
        assert_unsafe(&[E::Hard("link", "/etc/passwd")], "absolute path");
        assert_unsafe(&[E::Hard("link", "missing")], "not (yet) in the archive");
        assert_unsafe(&[E::Dir("d", 0o755), E::Hard("link", "d")], "not a regular file");
        assert_unsafe(
            &[E::File("f", 0o644, b"x"), E::Sym("s", "f"), E::Hard("link", "s")],
            "not a regular file",
        );
        assert_unsafe(
            &[E::Sym("s", "."), E::Hard("link", "s/f")],
            "parent \"s\" is a symlink",
        );
        assert_unsafe(
            &[E::File("f", 0o644, b"x"), E::Hard("f", "./f")],
            "hard link to itself",
        );
    }

    #[test]
    fn devices_fifos_and_unknown_types_are_refused() {
        assert_unsafe(
            &[E::Raw(EntryType::Char, "null", "")],
            "\"null\": entry type character device",
        );
        assert_unsafe(&[E::Raw(EntryType::Block, "sda", "")], "entry type block device");
        assert_unsafe(&[E::Raw(EntryType::Fifo, "pipe", "")], "entry type FIFO");
        assert_unsafe(&[E::Raw(EntryType::new(b'Z'), "odd", "")], "entry type 'Z'");
    }

    #[test]
    fn replacing_a_directory_is_refused() {
        assert_unsafe(
            &[E::Dir("d", 0o755), E::File("d", 0o644, b"x")],
            "exists as a directory",
        );
        assert_unsafe(&[E::Dir("d", 0o755), E::Sym("d", "x")], "exists as a directory");
        assert_unsafe(
            &[E::Sym("d", "x"), E::Dir("d", 0o755)],
            "exists as a file or symlink",
        );
    }

    #[test]
    fn limits_are_enforced() {
        let small = Limits {
            max_bytes: 100,
            max_entries: 10,
        };
        let big = [0u8; 101];
        match refused(&tarball(&[E::File("big", 0o644, &big)]), &small) {
            UnpackError::TooBig(m) => assert!(m.contains("\"big\""), "{m}"),
            other => panic!("expected TooBig, got {other:?}"),
        }
        let halves = tarball(&[E::File("a", 0o644, &big[..60]), E::File("b", 0o644, &big[..60])]);
        assert!(matches!(refused(&halves, &small), UnpackError::TooBig(_)));
        let few = Limits {
            max_bytes: 100,
            max_entries: 3,
        };
        let many = tarball(&[
            E::Dir("a", 0o755),
            E::Dir("b", 0o755),
            E::Dir("c", 0o755),
            E::Dir("d", 0o755),
        ]);
        match refused(&many, &few) {
            UnpackError::TooBig(m) => assert!(m.contains("more than 3 entries"), "{m}"),
            other => panic!("expected TooBig, got {other:?}"),
        }
        let long = format!("{}/f", "d".repeat(4100));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        b.append_data(&mut h, &long, io::empty()).expect("long");
        assert!(matches!(
            refused(&b.into_inner().expect("tar"), &Limits::default()),
            UnpackError::TooBig(_)
        ));
    }

    #[test]
    fn a_huge_gnu_long_name_is_refused_before_it_is_buffered() {
        // A 2 MiB `L` entry: more than the per-entry metadata slack.
        let mut b = tar::Builder::new(Vec::new());
        let name = vec![b'n'; 2 << 20];
        let h = raw_header(
            EntryType::GNULongName,
            b"././@LongLink",
            b"",
            0o644,
            name.len() as u64,
        );
        b.append(&h, &name[..]).expect("L");
        b.append(&raw_header(EntryType::Regular, b"f", b"", 0o644, 0), io::empty())
            .expect("f");
        match refused(&gzip(&b.into_inner().expect("tar")), &Limits::default()) {
            UnpackError::TooBig(m) => assert!(m.contains("metadata"), "{m}"),
            other => panic!("expected TooBig, got {other:?}"),
        }
    }

    #[test]
    fn a_header_lying_about_its_size_lets_no_more_through() {
        // The header says 10 bytes; 1000 follow. Only 10 may be written, and the rest is not a valid header.
        let mut data = Vec::new();
        data.extend_from_slice(raw_header(EntryType::Regular, b"f", b"", 0o644, 10).as_bytes());
        data.extend_from_slice(&[b'A'; 1000]);
        data.extend_from_slice(&[0u8; 1024]);
        let t = TempDir::new();
        let err = unpack(&data[..], &t.dest(), &Limits::default()).expect_err("corrupt");
        assert!(matches!(err, UnpackError::Io(_)), "{err:?}");
        assert_eq!(fs::metadata(t.dest().join("f")).expect("f").len(), 10);
    }

    #[test]
    fn a_truncated_archive_is_an_error() {
        let data = tarball(&[E::File("f", 0o644, &[7u8; 3000])]);
        let t = TempDir::new();
        let err = unpack(&data[..1500], &t.dest(), &Limits::default()).expect_err("truncated");
        match err {
            UnpackError::Io(m) => assert!(m.contains("truncated"), "{m}"),
            other => panic!("expected Io, got {other:?}"),
        }
        let err = unpack(&gzip(&data)[..40], &t.dest(), &Limits::default()).expect_err("truncated gzip");
        assert!(matches!(err, UnpackError::Io(_)), "{err:?}");
    }

    #[test]
    fn an_empty_input_is_an_empty_archive_and_a_missing_dest_an_error() {
        let t = TempDir::new();
        assert_eq!(
            unpack(io::empty(), &t.dest(), &Limits::default()).expect("empty"),
            Unpacked::default()
        );
        let err = unpack(io::empty(), &t.0.path("nope"), &Limits::default()).expect_err("no dest");
        assert!(matches!(err, UnpackError::Io(_)));
    }
}
