//! The files `haul.toml` names: where a relative path points, and whether a file that holds a secret is safe.
//!
//! Secrets are never written in the config itself, so every secret is a file, and a file anyone on the machine
//! can read is no secret: its mode is checked before it is used, at `haul check` and at start-up. Under systemd,
//! a relative secret path is a credential (`LoadCredential=`) in `$CREDENTIALS_DIRECTORY`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The directory of the config file. A relative path in `haul.toml` means a path beside the config, not beside
/// wherever the daemon happened to be started.
pub(crate) struct ConfigDir(PathBuf);

impl ConfigDir {
    pub(crate) fn of(config: &Path) -> ConfigDir {
        ConfigDir(config.parent().map(Path::to_path_buf).unwrap_or_default())
    }

    pub(crate) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.0.join(p)
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

/// A file holding a secret or a private key must exist and be readable by its owner only.
pub(crate) fn check_private_file(path: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a file", path.display()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is readable by other users (mode {mode:04o}); run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

/// Where a secret file is: as written when absolute; a relative one in `$CREDENTIALS_DIRECTORY` when systemd
/// provides one, else beside the config. Read at each use, so a credential directory set later is honoured.
pub(crate) fn credential_path(file: &Path, config_dir: &Path) -> PathBuf {
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        _ if file.is_absolute() => file.to_path_buf(),
        Some(dir) => Path::new(&dir).join(file),
        None => config_dir.join(file),
    }
}

/// The secret in a private file. Surrounding whitespace (the newline `echo` leaves) is not part of it.
pub(crate) fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    check_private_file(path)?;
    let text = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(text.trim_ascii().to_vec())
}
