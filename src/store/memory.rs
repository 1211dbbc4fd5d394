//! The replay memory: what every delivery of the last 8 days was remembered by, per app, held by the writer
//! in memory; and the deploy ids it mints.
//!
//! It used to be two tables of its own, and each webhook paid two lookups and two inserts into B-trees keyed
//! by random values (a GUID, a digest): two more pages written per request at every commit, the largest cost
//! of a signed flood after the fsync itself. Now the audit row is the durable record (its `delivery_id` and
//! `body_digest` columns) and this index is rebuilt from the rows of the last 8 days when the store opens.
//!
//! One key per request: its body digest where the forge signs the body alone (a replay is the same signed
//! bytes; the row then says whether the delivery id was the same too: `Duplicate`, or a replay under a fresh
//! id), else its delivery id (Standard Webhooks sign the id). A request with a body digest is also looked up
//! by its delivery id, which finds the rows remembered that way (from before body digests were kept). A key is 31 bits of a keyed hash of (kind, app,
//! value) packed with the row's `seq` into one `u64` slot of an open-addressing table (8 bytes a request, so
//! a flood's memory stays small); every slot whose hash matches is checked against its row before anything
//! is answered `duplicate`, so a collision can never refuse a new delivery.
//!
//! The index changes only inside the writer's transaction: what a job adds is journalled and taken back if
//! its savepoint or the whole group is rolled back, so memory and disk never disagree.

use std::hash::{BuildHasher, Hasher, RandomState};

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::DeployId;

/// What a key remembers.
#[derive(Clone, Copy)]
pub(super) enum Kind {
    Delivery = 1,
    Body = 2,
}

/// Slots of `hash << 32 | seq's low 32 bits`, linear probing, at most 3/4 full; 0 is an empty slot (every
/// hash has its top bit set).
#[derive(Default)]
struct Table {
    slots: Vec<u64>,
    len: usize,
}

impl Table {
    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    /// The low 32 bits of the `seq` of every slot with this hash.
    fn find(&self, hash: u32) -> impl Iterator<Item = u32> + '_ {
        let mask = self.mask();
        let mut i = hash as usize & mask;
        let mut left = if self.slots.is_empty() {
            0
        } else {
            self.slots.len()
        };
        std::iter::from_fn(move || {
            while left > 0 {
                left -= 1;
                let slot = self.slots[i];
                i = (i + 1) & mask;
                if slot == 0 {
                    left = 0;
                } else if (slot >> 32) as u32 == hash {
                    return Some(slot as u32);
                }
            }
            None
        })
    }

    fn insert(&mut self, slot: u64) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            let old = std::mem::take(&mut self.slots);
            self.slots = vec![0; (old.len() * 2).max(1024)];
            self.len = 0;
            for s in old.into_iter().filter(|s| *s != 0) {
                self.put(s);
            }
        }
        self.put(slot);
    }

    fn put(&mut self, slot: u64) {
        let mask = self.mask();
        let mut i = (slot >> 32) as usize & mask;
        while self.slots[i] != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = slot;
        self.len += 1;
    }

    /// Keeps the slots `keep` says yes to (a rebuild: forgetting is hourly, taking back is rare).
    fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        let kept: Vec<u64> = self
            .slots
            .iter()
            .copied()
            .filter(|s| *s != 0 && keep(*s))
            .collect();
        let mut size = 1024;
        while kept.len() * 4 > size * 3 {
            size *= 2;
        }
        self.slots = vec![0; if kept.is_empty() { 0 } else { size }];
        self.len = 0;
        for s in kept {
            self.put(s);
        }
    }
}

pub(super) struct Memory {
    keys: RandomState,
    table: Table,
    /// The highest `seq` remembered: a slot's 32 bits of `seq` are the row at or below it that has them.
    top: i64,
    /// Slots added since the open transaction began (taken back on a rollback).
    journal: Vec<u64>,
    /// The deploy id minter: the second last minted in, and the next suffix in it.
    second: i64,
    next: u64,
}

/// 31^6 suffixes per second; a new second starts at a random place in the first half.
const SUFFIXES: u64 = 31u64.pow(6);

impl Memory {
    pub(super) fn new() -> Memory {
        Memory {
            keys: RandomState::new(),
            table: Table::default(),
            top: 0,
            journal: Vec::new(),
            second: i64::MIN,
            next: 0,
        }
    }

    /// The rows of the last `keep_ms`, remembered.
    pub(super) fn load(conn: &Connection, now: i64, keep_ms: i64) -> rusqlite::Result<Memory> {
        let mut m = Memory::new();
        let from = first_seq_since(conn, now - keep_ms)?;
        let mut stmt =
            conn.prepare("SELECT seq, app, delivery_id, body_digest FROM deploys WHERE seq >= ?1")?;
        let mut rows = stmt.query(params![from])?;
        while let Some(r) = rows.next()? {
            let (seq, app): (i64, String) = (r.get(0)?, r.get(1)?);
            let delivery: Option<String> = r.get(2)?;
            let body: Option<Vec<u8>> = r.get(3)?;
            m.remember(&app, delivery.as_deref(), body.as_deref(), seq);
        }
        m.journal.clear();
        Ok(m)
    }

    fn hash(&self, kind: Kind, app: &str, value: &[u8]) -> u32 {
        let mut h = self.keys.build_hasher();
        h.write_u8(kind as u8);
        h.write(app.as_bytes());
        h.write_u8(0xff);
        h.write(value);
        (h.finish() >> 32) as u32 | 0x8000_0000
    }

    /// What a request is remembered by: its body digest if it has one, else its delivery id.
    fn key<'a>(delivery: Option<&'a str>, body: Option<&'a [u8]>) -> Option<(Kind, &'a [u8])> {
        match (body, delivery) {
            (Some(b), _) => Some((Kind::Body, b)),
            (None, Some(d)) => Some((Kind::Delivery, d.as_bytes())),
            (None, None) => None,
        }
    }

    /// The rows that may have been remembered by this key (each to be confirmed against its row).
    pub(super) fn candidates(&self, kind: Kind, app: &str, value: &[u8]) -> Vec<i64> {
        let top = self.top;
        self.table
            .find(self.hash(kind, app, value))
            .map(|low| {
                let seq = (top & !0xffff_ffff) | i64::from(low);
                if seq > top {
                    seq - (1 << 32)
                } else {
                    seq
                }
            })
            .collect()
    }

    /// Remembers the request recorded in row `seq`.
    pub(super) fn remember(&mut self, app: &str, delivery: Option<&str>, body: Option<&[u8]>, seq: i64) {
        let Some((kind, value)) = Memory::key(delivery, body) else {
            return;
        };
        let slot = u64::from(self.hash(kind, app, value)) << 32 | u64::from(seq as u32);
        self.table.insert(slot);
        self.top = self.top.max(seq);
        self.journal.push(slot);
    }

    /// A transaction begins or has been committed: nothing to take back any more.
    pub(super) fn settle(&mut self) {
        self.journal.clear();
    }

    pub(super) fn mark(&self) -> usize {
        self.journal.len()
    }

    /// Takes back everything remembered since `mark` (a rolled-back savepoint or group).
    pub(super) fn undo_to(&mut self, mark: usize) {
        if mark >= self.journal.len() {
            return;
        }
        let mut undo: Vec<u64> = self.journal.drain(mark..).collect();
        undo.sort_unstable();
        self.table.retain(|s| undo.binary_search(&s).is_err());
    }

    /// Forgets what was first seen before `now - keep_ms`; returns how many keys went.
    pub(super) fn forget(&mut self, conn: &Connection, now: i64, keep_ms: i64) -> rusqlite::Result<usize> {
        let from = first_seq_since(conn, now - keep_ms)?;
        let before = self.table.len;
        let top = self.top;
        self.table.retain(|s| {
            let low = s as u32;
            let seq = (top & !0xffff_ffff) | i64::from(low);
            let seq = if seq > top { seq - (1 << 32) } else { seq };
            seq >= from
        });
        Ok(before - self.table.len)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.table.len
    }

    /// A new deploy id: ids minted by this writer in the same second follow each other (so the audit's id
    /// index grows at its end, like its other indexes), starting at a random place so that two daemons, or
    /// one restarted within the second, do not meet (and the insert tries again if they do).
    pub(super) fn mint(&mut self, now_ms: i64) -> DeployId {
        let second = now_ms.div_euclid(1000);
        if second != self.second || self.next >= SUFFIXES {
            self.reseed(second);
        }
        let id = DeployId::numbered(now_ms, self.next);
        self.next += 1;
        id
    }

    /// Mints the last id again (for the test of a taken id).
    #[cfg(test)]
    pub(super) fn step_back(&mut self) {
        self.next -= 1;
    }

    /// After an id was found taken: continue from another random place.
    pub(super) fn reseed(&mut self, second: i64) {
        self.second = second;
        self.next = fastrand::u64(..SUFFIXES / 2);
    }
}

/// The first row requested at or after `since` (or the next row to come). `seq` and `requested_at` both
/// follow arrival, so this is a binary search over `seq`. After the clock was set back it may keep some rows
/// longer; after it ran fast and was corrected, it may forget rows stamped in the fast hour early (the
/// lineage and sticky-rollback rules still stand behind them).
fn first_seq_since(conn: &Connection, since: i64) -> rusqlite::Result<i64> {
    let (lo, hi): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(seq), max(seq) FROM deploys", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(hi)) = (lo, hi) else {
        return Ok(0);
    };
    let mut hi = hi + 1;
    let mut at = conn.prepare("SELECT requested_at FROM deploys WHERE seq >= ?1 ORDER BY seq LIMIT 1")?;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let t: Option<i64> = at.query_row(params![mid], |r| r.get(0)).optional()?;
        match t {
            Some(t) if t < since => lo = mid + 1,
            _ => hi = mid,
        }
    }
    Ok(lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_minted_in_one_second_follow_each_other() {
        let mut m = Memory::new();
        let ids: Vec<DeployId> = (0..1000).map(|i| m.mint(1_800_000_000_000 + i % 900)).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "sorted: {:?}", &ids[..3]);
        let mut unique = ids.clone();
        unique.dedup();
        assert_eq!(unique.len(), ids.len());
        assert!(ids
            .iter()
            .all(|i| DeployId::parse(i.as_str()).as_ref() == Some(i)));
        // The next second starts afresh, after every id of the one before.
        let later = m.mint(1_800_000_001_000);
        assert!(later > ids[999]);
    }

    #[test]
    fn a_rolled_back_job_is_forgotten() {
        let mut m = Memory::new();
        let seqs = |m: &Memory, app, d: Option<&str>, b: Option<&[u8]>| match (b, d) {
            (Some(b), _) => m.candidates(Kind::Body, app, b),
            (None, Some(d)) => m.candidates(Kind::Delivery, app, d.as_bytes()),
            (None, None) => vec![],
        };
        m.remember("blog", Some("d-1"), Some(b"one"), 1);
        m.settle();
        let mark = m.mark();
        m.remember("blog", Some("d-2"), Some(b"two"), 2);
        m.remember("blog", Some("d-3"), None, 3);
        m.undo_to(mark);
        assert_eq!(
            seqs(&m, "blog", Some("d-9"), Some(b"one")),
            vec![1],
            "by its body"
        );
        assert_eq!(seqs(&m, "blog", None, Some(b"two")), Vec::<i64>::new());
        assert_eq!(seqs(&m, "blog", Some("d-3"), None), Vec::<i64>::new());
        assert_eq!(
            seqs(&m, "shop", None, Some(b"one")),
            Vec::<i64>::new(),
            "apps do not meet"
        );
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn the_table_grows_finds_every_key_and_forgets_by_seq() {
        let mut m = Memory::new();
        let top = (1i64 << 32) + 10_000;
        for i in 0..10_000i64 {
            m.remember("blog", Some(&format!("d-{i}")), None, top - 10_000 + i);
        }
        for i in 0..10_000i64 {
            let seqs = m.candidates(Kind::Delivery, "blog", format!("d-{i}").as_bytes());
            assert!(
                seqs.contains(&(top - 10_000 + i)),
                "{i}: {seqs:?} (seq past 2^32)"
            );
        }
        let c = crate::store::memory();
        for i in 0..10_000i64 {
            c.execute(
                "INSERT INTO deploys (seq, id, app, trigger, actor, state, requested_at) VALUES (?1, ?2, 'blog', 'webhook', 'x', 'ignored', ?3)",
                params![top - 10_000 + i, format!("id-{i}"), i],
            )
            .expect("row");
        }
        // Rows requested before 4,000 go.
        assert_eq!(m.forget(&c, 5_000, 1_000).expect("forget"), 4_000);
        assert_eq!(m.len(), 6_000);
        assert!(m.candidates(Kind::Delivery, "blog", b"d-3999").is_empty());
        assert_eq!(m.candidates(Kind::Delivery, "blog", b"d-4000"), vec![top - 6_000]);
    }
}
