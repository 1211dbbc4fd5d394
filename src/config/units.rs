//! Durations and sizes as people write them in `haul.toml` (`"90s"`, `"1MiB"`).
//!
//! One parser for each, so every key that takes a duration or a size accepts the same spellings and rejects
//! the rest with the same message.

use std::time::Duration;

/// `"90s"`, `"10m"`, `"24h"`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like \"90s\", \"10m\" or \"24h\" ({e})"))
}

/// An optional duration setting, `default` when unset; the error names the key.
pub(crate) fn duration_or(key: &str, value: Option<&str>, default: Duration) -> Result<Duration, String> {
    value.map_or(Ok(default), |s| {
        parse_duration(s).map_err(|e| format!("{key}: {e}"))
    })
}

/// An optional duration setting with no default; the error names the key.
pub(crate) fn optional_duration(key: &str, value: Option<&str>) -> Result<Option<Duration>, String> {
    value
        .map(|s| parse_duration(s).map_err(|e| format!("{key}: {e}")))
        .transpose()
}

/// `"1MiB"`, `"512KiB"`, `"1000000"`.
pub(crate) fn parse_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like \"1MiB\""))?;
    let mult = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1024,
        "MiB" | "M" => 1024 * 1024,
        "GiB" | "G" => 1024 * 1024 * 1024,
        "kB" => 1000,
        "MB" => 1_000_000,
        _ => return Err(format!("{s:?}: unknown unit (use B, KiB, MiB or GiB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

/// An optional size setting, `default` when unset; the error names the key.
pub(crate) fn size_or(key: &str, value: Option<&str>, default: usize) -> Result<usize, String> {
    value.map_or(Ok(default), |s| parse_size(s).map_err(|e| format!("{key}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("512KiB"), Ok(512 << 10));
        assert_eq!(parse_size("2000"), Ok(2000));
        assert!(parse_size("lots").is_err());
    }
}
