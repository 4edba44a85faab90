//! The disk spool of one sink: an append-only queue of [`record`]s in segment files under
//! `<state_dir>/spool/<sink>/`, read from a cursor that moves as the database acknowledges.
//!
//! - Segment files are `<id>.seg` while written and `<id>.<records>.seg` once full (the
//!   rename is the seal; the count lets a restart know the depth without reading them). A
//!   record is a reading, a state change, a health or an energy point ([`Record`]).
//!   Each starts with the 8 bytes `PMTRSPL1`.
//! - The cursor file `cursor` holds the first unsent position (segment, offset, records
//!   before it in that segment) with a checksum. It is replaced by rename after every
//!   acknowledged batch. A lost or damaged cursor restarts at the oldest segment: some points
//!   are sent twice, which InfluxDB stores once (same series, same time: the same point).
//! - A segment is deleted as soon as the cursor leaves it; when everything is sent the folder
//!   is empty again.
//! - Full (`max_bytes`): the oldest segment is deleted, its unsent records counted as dropped.
//! - Opening recovers: a torn record at the end of the segment being written (power cut during
//!   a write) is cut off; damaged bytes inside a segment are skipped when read, with a log line;
//!   each costs only the records it hit.
//! - Appends go straight to the file (no user-space buffer), so a `kill -9` loses nothing that
//!   was appended; [`Spool::sync`] makes them survive a power cut.

use super::record::{self, Item, Names};
use crate::reading::Record;
use chrono::{DateTime, Utc};
use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const FILE_MAGIC: &[u8; 8] = b"PMTRSPL1";
const CURSOR_FILE: &str = "cursor";
/// Bytes read from a segment at a time while replaying.
const READ_CHUNK: usize = 1 << 20;

/// Size limits of a spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolLimits {
    /// The most disk the spool may use; beyond it the oldest segment goes.
    pub max_bytes: u64,
    /// Size at which a segment is sealed and a new one begun.
    pub segment_bytes: u64,
}

impl SpoolLimits {
    /// Segments of at most 8 MiB and at most an eighth of the limit, so that dropping one
    /// when full loses a small part of the spool.
    pub fn new(max_bytes: u64) -> Self {
        let segment_bytes = (max_bytes / 8).clamp(4096, 8 << 20);
        SpoolLimits { max_bytes, segment_bytes }
    }
}

/// A position in the spool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub segment: u64,
    pub offset: u64,
    /// Records before `offset` in that segment.
    pub done: u64,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    path: PathBuf,
    bytes: u64,
    records: u64,
    sealed: bool,
}

/// What opening found and repaired, for the log and for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovery {
    /// A torn record at the end of the segment being written was cut off.
    TornTail { segment: u64, bytes: u64 },
    /// Damaged bytes were skipped (at open or while reading).
    Damage { segment: u64, offset: u64, bytes: u64 },
    /// A file that is not a spool segment was set aside (renamed `*.damaged`).
    NotASegment { path: PathBuf },
    /// The cursor file was unreadable; replay starts at the oldest segment.
    CursorReset,
    /// A segment could not be read (EIO) and was set aside with its unsent records.
    Unreadable { segment: u64, records: u64 },
}

/// A batch read from the spool: the records and where the cursor goes once they are sent.
#[derive(Debug, Default)]
pub struct Batch {
    pub records: Vec<Record>,
    pub end: Option<Cursor>,
}

#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    limits: SpoolLimits,
    segments: VecDeque<Segment>,
    /// Append handle of the last segment, when it is not sealed.
    active: Option<File>,
    cursor: Cursor,
    reader: Option<(u64, File)>,
    unsynced: bool,
    names: Names,
    encoded: Vec<u8>,
    oldest: Option<Option<DateTime<Utc>>>,
    /// Everything repaired since opening.
    pub recoveries: Vec<Recovery>,
    /// Records lost because the spool was full, since opening.
    pub dropped: u64,
    /// Bytes written to segment files since opening (the SD card's share).
    pub bytes_written: u64,
    /// False for a spool that could not be opened ([`Spool::closed`]): it holds nothing and
    /// refuses appends until [`Spool::reopen`] succeeds.
    open: bool,
}

fn segment_name(id: u64, sealed_count: Option<u64>) -> String {
    match sealed_count {
        Some(n) => format!("{id:016}.{n}.seg"),
        None => format!("{id:016}.seg"),
    }
}

/// `(id, Some(count))` for a sealed segment, `(id, None)` for an open one.
fn parse_segment_name(name: &str) -> Option<(u64, Option<u64>)> {
    let stem = name.strip_suffix(".seg")?;
    let mut parts = stem.split('.');
    let id = parts.next()?.parse().ok()?;
    let count = match parts.next() {
        Some(c) => Some(c.parse().ok()?),
        None => None,
    };
    parts.next().is_none().then_some((id, count))
}

impl Spool {
    /// Opens (or creates) the spool in `dir` and repairs what a crash left.
    pub fn open(dir: &Path, limits: SpoolLimits) -> io::Result<Spool> {
        fs::create_dir_all(dir)?;
        let mut spool = Spool { open: true, ..Spool::closed(dir, limits) };
        let mut found = Vec::new();
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some((id, count)) = parse_segment_name(name) {
                found.push((id, count, entry.path()));
            }
        }
        found.sort_by_key(|(id, _, _)| *id);
        let last = found.last().map(|(id, _, _)| *id);
        for (id, count, path) in found {
            let bytes = fs::metadata(&path)?.len();
            let mut magic = [0u8; 8];
            let readable = File::open(&path).and_then(|mut f| f.read_exact(&mut magic)).is_ok();
            if !readable || &magic != FILE_MAGIC {
                let aside = path.with_extension("damaged");
                tracing::warn!(file = %path.display(), "not a spool segment (bad header); set aside as {}",
                    aside.display());
                fs::rename(&path, &aside)?;
                sync_dir(dir)?;
                spool.recoveries.push(Recovery::NotASegment { path });
                continue;
            }
            match count {
                Some(records) => spool.segments.push_back(Segment { id, path, bytes, records, sealed: true }),
                None => {
                    let seg = spool.recover_open_segment(id, path)?;
                    spool.segments.push_back(seg);
                    if Some(id) != last {
                        // Only the newest segment is written; an older open one was left by
                        // a crash during sealing.
                        spool.seal_back_of(spool.segments.len() - 1)?;
                    }
                }
            }
        }
        if let Some(seg) = spool.segments.back() {
            if !seg.sealed {
                spool.active = Some(OpenOptions::new().append(true).open(&seg.path)?);
            }
        }
        spool.load_cursor()?;
        Ok(spool)
    }

    /// A spool that could not be opened (a read-only or failing disk): it holds nothing,
    /// refuses appends, and [`Spool::reopen`] tries again. The files in `dir` are left alone.
    pub fn closed(dir: &Path, limits: SpoolLimits) -> Spool {
        Spool {
            dir: dir.to_path_buf(),
            limits,
            segments: VecDeque::new(),
            active: None,
            cursor: Cursor { segment: 0, offset: FILE_MAGIC.len() as u64, done: 0 },
            reader: None,
            unsynced: false,
            names: Names::default(),
            encoded: Vec::new(),
            oldest: None,
            recoveries: Vec::new(),
            dropped: 0,
            bytes_written: 0,
            open: false,
        }
    }

    /// False while the spool could not be opened.
    pub fn is_open(&self) -> bool {
        self.open
    }

    /// Opens a [`Spool::closed`] spool again, keeping its counters.
    pub fn reopen(&mut self) -> io::Result<()> {
        if self.open {
            return Ok(());
        }
        let mut fresh = Spool::open(&self.dir, self.limits)?;
        fresh.dropped = self.dropped;
        fresh.bytes_written = self.bytes_written;
        *self = fresh;
        Ok(())
    }

    /// Sets the oldest segment aside (renamed `*.damaged`, for a human) after it could not be
    /// read (EIO): returns its unsent records, now lost to the sink, and where it went. The
    /// cursor moves to the next segment.
    pub fn set_aside_front(&mut self) -> io::Result<(u64, PathBuf)> {
        let Some(front) = self.segments.front() else {
            return Err(io::Error::other("no segment to set aside"));
        };
        let aside = front.path.with_extension("damaged");
        let lost = front.records - self.cursor_done();
        fs::rename(&front.path, &aside)?;
        sync_dir(&self.dir)?;
        let s = self.segments.pop_front().expect("checked");
        self.reader = None;
        if self.segments.is_empty() {
            self.active = None;
            self.unsynced = false;
        }
        self.recoveries.push(Recovery::Unreadable { segment: s.id, records: lost });
        self.oldest = None;
        match self.segments.front() {
            Some(next) => {
                self.cursor = Cursor { segment: next.id, offset: FILE_MAGIC.len() as u64, done: 0 };
                self.save_cursor()?;
            }
            None => {
                self.cursor = Cursor { segment: 0, offset: FILE_MAGIC.len() as u64, done: 0 };
                let _ = fs::remove_file(self.dir.join(CURSOR_FILE));
            }
        }
        Ok((lost, aside))
    }

    /// Reads a segment that was being written, counts its records and cuts a torn tail.
    fn recover_open_segment(&mut self, id: u64, path: PathBuf) -> io::Result<Segment> {
        let buf = fs::read(&path)?;
        let body = &buf[FILE_MAGIC.len()..];
        let mut records = 0;
        let mut good_end = 0;
        let mut pos = 0;
        while let Some(item) = record::next_item(body, pos) {
            match item {
                Item::Record { range, payload } => {
                    if record::decode(&body[payload], &mut self.names).is_ok() {
                        records += 1;
                    }
                    pos = range.end;
                    good_end = pos;
                }
                Item::Damage(r) | Item::Incomplete(r) => {
                    pos = r.end;
                    if pos < body.len() {
                        let offset = (FILE_MAGIC.len() + r.start) as u64;
                        let bytes = r.len() as u64;
                        tracing::warn!(segment = id, offset, bytes, "spool: damaged bytes skipped");
                        self.recoveries.push(Recovery::Damage { segment: id, offset, bytes });
                    }
                }
            }
        }
        let keep = (FILE_MAGIC.len() + good_end) as u64;
        let cut = buf.len() as u64 - keep;
        if cut > 0 {
            tracing::warn!(
                segment = id,
                bytes = cut,
                "spool: the last record was cut short (power cut during a write?); removed, \
                 everything before it is kept"
            );
            OpenOptions::new().write(true).open(&path)?.set_len(keep)?;
            self.recoveries.push(Recovery::TornTail { segment: id, bytes: cut });
        }
        Ok(Segment { id, path, bytes: keep, records, sealed: false })
    }

    fn seal_back_of(&mut self, index: usize) -> io::Result<()> {
        let seg = &mut self.segments[index];
        if seg.sealed {
            return Ok(());
        }
        let sealed = self.dir.join(segment_name(seg.id, Some(seg.records)));
        fs::rename(&seg.path, &sealed)?;
        sync_dir(&self.dir)?;
        seg.path = sealed;
        seg.sealed = true;
        if self.reader.as_ref().is_some_and(|(id, _)| *id == seg.id) {
            self.reader = None;
        }
        Ok(())
    }

    fn load_cursor(&mut self) -> io::Result<()> {
        let start = |segment| Cursor { segment, offset: FILE_MAGIC.len() as u64, done: 0 };
        let Some(first) = self.segments.front().map(|s| s.id) else {
            let _ = fs::remove_file(self.dir.join(CURSOR_FILE));
            return Ok(());
        };
        self.cursor = start(first);
        let bytes = match fs::read(self.dir.join(CURSOR_FILE)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let Some(c) = decode_cursor(&bytes) else {
            tracing::warn!(dir = %self.dir.display(), "spool cursor unreadable: replaying from the oldest segment");
            self.recoveries.push(Recovery::CursorReset);
            return Ok(());
        };
        // Segments before the cursor were sent; a crash came between the cursor and the delete.
        while self.segments.front().is_some_and(|s| s.id < c.segment) && self.segments.len() > 1 {
            let s = self.segments.pop_front().expect("checked");
            fs::remove_file(&s.path)?;
        }
        match self.segments.front() {
            Some(s) if s.id == c.segment && c.offset <= s.bytes && c.done <= s.records => self.cursor = c,
            Some(s) => {
                if s.id == c.segment {
                    tracing::warn!(dir = %self.dir.display(), "spool cursor past the end of its segment: replaying it");
                    self.recoveries.push(Recovery::CursorReset);
                }
                self.cursor = start(s.id);
            }
            None => {}
        }
        Ok(())
    }

    /// Records waiting to be sent.
    pub fn len(&self) -> u64 {
        self.segments.iter().map(|s| s.records).sum::<u64>() - self.cursor_done()
    }

    fn cursor_done(&self) -> u64 {
        match self.segments.front() {
            Some(s) if s.id == self.cursor.segment => self.cursor.done.min(s.records),
            _ => 0,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most the spool keeps on disk (`spool_max`).
    pub fn max_bytes(&self) -> u64 {
        self.limits.max_bytes
    }

    /// Disk used by segment files.
    pub fn bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.bytes).sum()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends records. Returns how many older records were dropped to stay within the size
    /// limit.
    pub fn append(&mut self, records: &[Record]) -> io::Result<u64> {
        if records.is_empty() {
            return Ok(0);
        }
        if !self.open {
            return Err(io::Error::other("the spool could not be opened (read-only or failing disk?)"));
        }
        let was_empty = self.is_empty();
        let need_new = match self.segments.back() {
            Some(s) => s.sealed || s.bytes >= self.limits.segment_bytes,
            None => true,
        };
        if need_new {
            self.start_segment()?;
        }
        self.encoded.clear();
        for r in records {
            record::encode(r, &mut self.encoded);
        }
        let file = self.active.as_mut().expect("an active segment was just ensured");
        let seg = self.segments.back_mut().expect("active segment");
        if let Err(e) = file.write_all(&self.encoded) {
            // A part may have been written (disk full): cut it so the next append lines up.
            let _ = file.set_len(seg.bytes);
            return Err(e);
        }
        seg.bytes += self.encoded.len() as u64;
        seg.records += records.len() as u64;
        self.bytes_written += self.encoded.len() as u64;
        self.unsynced = true;
        if was_empty {
            self.oldest = None;
        }
        self.enforce_limit()
    }

    fn start_segment(&mut self) -> io::Result<()> {
        if let Some(mut file) = self.active.take() {
            file.flush()?;
            sync_file(&file)?;
            let index = self.segments.len() - 1;
            self.seal_back_of(index)?;
        }
        let id = self.segments.back().map_or(1, |s| s.id + 1);
        let path = self.dir.join(segment_name(id, None));
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).open(&path)?;
        file.write_all(FILE_MAGIC)?;
        sync_file(&file)?;
        sync_dir(&self.dir)?;
        self.bytes_written += FILE_MAGIC.len() as u64;
        if self.segments.is_empty() {
            self.cursor = Cursor { segment: id, offset: FILE_MAGIC.len() as u64, done: 0 };
        }
        self.segments.push_back(Segment {
            id,
            path,
            bytes: FILE_MAGIC.len() as u64,
            records: 0,
            sealed: false,
        });
        self.active = Some(file);
        Ok(())
    }

    fn enforce_limit(&mut self) -> io::Result<u64> {
        let mut dropped = 0;
        while self.bytes() > self.limits.max_bytes && self.segments.len() > 1 {
            let lost = self.segments.front().map_or(0, |s| s.records) - self.cursor_done();
            let s = self.segments.pop_front().expect("more than one");
            fs::remove_file(&s.path)?;
            if self.reader.as_ref().is_some_and(|(id, _)| *id == s.id) {
                self.reader = None;
            }
            dropped += lost;
            let next = self.segments.front().expect("more than one").id;
            self.cursor = Cursor { segment: next, offset: FILE_MAGIC.len() as u64, done: 0 };
            self.oldest = None;
            self.save_cursor()?;
        }
        self.dropped += dropped;
        Ok(dropped)
    }

    /// Makes every append so far survive a power cut.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced {
            if let Some(f) = &self.active {
                f.sync_data()?;
                count_sync(1, 0);
            }
            self.unsynced = false;
        }
        Ok(())
    }

    /// Whether appends are waiting for [`Spool::sync`].
    pub fn needs_sync(&self) -> bool {
        self.unsynced
    }

    /// Up to `max` records from the cursor, without moving it (see [`Spool::commit`]). A batch
    /// never spans two segments.
    pub fn read(&mut self, max: usize) -> io::Result<Batch> {
        let mut batch = Batch::default();
        let Some(seg) = self.segments.front() else { return Ok(batch) };
        let (id, seg_bytes) = (seg.id, seg.bytes);
        let mut cursor = self.cursor;
        if cursor.segment != id {
            cursor = Cursor { segment: id, offset: FILE_MAGIC.len() as u64, done: 0 };
        }
        if self.reader.as_ref().is_none_or(|(rid, _)| *rid != id) {
            let path = self.segments.front().expect("checked").path.clone();
            self.reader = Some((id, File::open(path)?));
        }
        let mut chunk = Vec::new();
        while batch.records.len() < max && cursor.offset < seg_bytes {
            let want = ((seg_bytes - cursor.offset) as usize).min(READ_CHUNK.max(chunk.len() * 2));
            chunk.resize(want, 0);
            let file = &mut self.reader.as_mut().expect("opened above").1;
            file.seek(SeekFrom::Start(cursor.offset))?;
            file.read_exact(&mut chunk)?;
            let at_end = cursor.offset + want as u64 == seg_bytes;
            let mut pos = 0;
            while batch.records.len() < max {
                let Some(item) = record::next_item(&chunk, pos) else { break };
                match item {
                    Item::Record { range, payload } => {
                        match record::decode(&chunk[payload], &mut self.names) {
                            Ok(r) => batch.records.push(r),
                            Err(e) => tracing::warn!(
                                segment = id,
                                offset = cursor.offset + pos as u64,
                                "spool: {e}; skipped"
                            ),
                        }
                        pos = range.end;
                        cursor.done += 1;
                    }
                    Item::Incomplete(_) if !at_end => break,
                    Item::Damage(r) | Item::Incomplete(r) => {
                        if !at_end && r.end == chunk.len() {
                            break; // a good record may start beyond this chunk
                        }
                        let offset = cursor.offset + r.start as u64;
                        tracing::warn!(
                            segment = id,
                            offset,
                            bytes = r.len(),
                            "spool: damaged bytes skipped (the records they held are lost)"
                        );
                        self.recoveries.push(Recovery::Damage { segment: id, offset, bytes: r.len() as u64 });
                        pos = r.end;
                    }
                }
            }
            if pos == 0 && !at_end {
                // Not one whole item in the chunk: read a bigger one.
                chunk.resize(chunk.len() * 2, 0);
                continue;
            }
            cursor.offset += pos as u64;
        }
        if cursor != self.cursor || !batch.records.is_empty() {
            batch.end = Some(cursor);
        }
        Ok(batch)
    }

    /// The records of a batch were sent: move the cursor to its end.
    pub fn commit(&mut self, end: Cursor) -> io::Result<()> {
        let Some(front) = self.segments.front() else { return Ok(()) };
        if end.segment != front.id {
            return Ok(()); // the segment was dropped meanwhile (spool full)
        }
        self.cursor = end;
        self.oldest = None;
        let front = self.segments.front().expect("checked");
        if end.offset >= front.bytes {
            if front.sealed || self.segments.len() > 1 {
                let s = self.segments.pop_front().expect("checked");
                self.reader = None;
                fs::remove_file(&s.path)?;
                if s.id == self.segments.back().map_or(0, |b| b.id) {
                    self.active = None;
                }
                if let Some(next) = self.segments.front() {
                    self.cursor = Cursor { segment: next.id, offset: FILE_MAGIC.len() as u64, done: 0 };
                }
            } else {
                // Everything sent: the active segment goes too, the folder is empty again.
                let s = self.segments.pop_front().expect("checked");
                self.active = None;
                self.reader = None;
                self.unsynced = false;
                fs::remove_file(&s.path)?;
            }
        }
        if self.segments.is_empty() {
            let _ = fs::remove_file(self.dir.join(CURSOR_FILE));
            self.cursor = Cursor { segment: 0, offset: FILE_MAGIC.len() as u64, done: 0 };
            Ok(())
        } else {
            self.save_cursor()
        }
    }

    /// Replaces the cursor file: written, synced, renamed over the old one, and the folder
    /// synced, so that a power cut leaves the old cursor or the new one, never none.
    fn save_cursor(&self) -> io::Result<()> {
        let tmp = self.dir.join("cursor.tmp");
        let mut f = File::create(&tmp)?;
        f.write_all(&encode_cursor(&self.cursor))?;
        sync_file(&f)?;
        drop(f);
        fs::rename(&tmp, self.dir.join(CURSOR_FILE))?;
        sync_dir(&self.dir)
    }

    /// The time of the oldest unsent record.
    pub fn oldest(&mut self) -> Option<DateTime<Utc>> {
        if let Some(o) = self.oldest {
            return o;
        }
        let o = self.read(1).ok().and_then(|b| b.records.first().map(Record::time));
        self.oldest = Some(o);
        o
    }
}

/// Whether a spool I/O error may go away by itself (out of descriptors or memory,
/// interrupted): then the read is tried again later instead of setting a segment aside.
pub fn is_transient(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock | io::ErrorKind::OutOfMemory)
        || matches!(e.raw_os_error(), Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOMEM))
}

mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
}

thread_local! {
    /// File and folder syncs done by this thread, for the tests that guard them.
    static SYNCS: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

fn count_sync(file: u64, dir: u64) {
    SYNCS.with(|c| {
        let (f, d) = c.get();
        c.set((f + file, d + dir));
    });
}

fn sync_file(f: &File) -> io::Result<()> {
    f.sync_data()?;
    count_sync(1, 0);
    Ok(())
}

/// Makes a file created, renamed or deleted in `dir` survive a power cut.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()?;
    count_sync(0, 1);
    Ok(())
}

fn encode_cursor(c: &Cursor) -> Vec<u8> {
    let mut b = Vec::with_capacity(28);
    b.extend_from_slice(&c.segment.to_le_bytes());
    b.extend_from_slice(&c.offset.to_le_bytes());
    b.extend_from_slice(&c.done.to_le_bytes());
    let crc = crc32fast::hash(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

fn decode_cursor(b: &[u8]) -> Option<Cursor> {
    if b.len() != 28 || crc32fast::hash(&b[..24]).to_le_bytes() != b[24..] {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
    Some(Cursor { segment: u(0), offset: u(8), done: u(16) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::Model;
    use crate::reading::{Phase, Quality, Quantity, Reading, Sample};
    use chrono::TimeZone;

    fn reading(i: u64) -> Record {
        Record::Reading(Reading {
            meter: "m1".into(),
            model: Model::Pzem016,
            time: Utc.timestamp_millis_opt(1_700_000_000_000 + i as i64).unwrap(),
            samples: vec![Sample::new(Phase::L1, Quantity::Voltage, i as f64)],
            quality: Quality::default(),
        })
    }

    fn ids(rs: &[Record]) -> Vec<u64> {
        rs.iter()
            .map(|r| match r {
                Record::Reading(r) => r.samples[0].value as u64,
                Record::Change(c) => c.cause.parse().unwrap(),
                Record::Health(h) => h.fields()[0].1,
                Record::Energy(e) => (e.time().timestamp_millis() - 1_700_000_000_000) as u64,
            })
            .collect()
    }

    fn change(i: u64) -> Record {
        Record::Change(crate::reading::StateChange {
            time: Utc.timestamp_millis_opt(1_700_000_000_000 + i as i64).unwrap(),
            subject: crate::reading::Subject::ALL[i as usize % 2],
            name: "overvoltage".into(),
            event: crate::reading::ChangeEvent::ALL[i as usize % crate::reading::ChangeEvent::ALL.len()],
            active: i % 3 == 0,
            held: false,
            dry_run: false,
            cause: i.to_string().into(),
        })
    }

    /// Reads and commits everything, `step` at a time.
    fn drain(s: &mut Spool, step: usize) -> Vec<u64> {
        let mut out = Vec::new();
        loop {
            let b = s.read(step).unwrap();
            let Some(end) = b.end else { break };
            out.extend(ids(&b.records));
            s.commit(end).unwrap();
        }
        out
    }

    fn small() -> SpoolLimits {
        SpoolLimits { max_bytes: 1 << 20, segment_bytes: 1000 }
    }

    #[test]
    fn append_read_commit_in_order_across_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), small()).unwrap();
        for i in 0..100 {
            s.append(&[reading(i)]).unwrap();
        }
        assert!(s.segments.len() >= 3, "several segments: {}", s.segments.len());
        assert_eq!(s.len(), 100);
        assert_eq!(s.oldest(), Some(reading(0).time()));
        assert_eq!(drain(&mut s, 7), (0..100).collect::<Vec<_>>());
        assert!(s.is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0, "folder empty once all is sent");
    }

    #[test]
    fn state_changes_queue_with_readings_across_segments_and_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let record = |i: u64| if i % 4 == 1 { change(i) } else { reading(i) };
        let mut sent = Vec::new();
        {
            let mut s = Spool::open(dir.path(), small()).unwrap();
            for i in 0..100 {
                s.append(&[record(i)]).unwrap();
            }
            assert!(s.segments.len() >= 3, "several segments: {}", s.segments.len());
            let b = s.read(10).unwrap();
            assert_eq!(b.records, (0..10).map(record).collect::<Vec<_>>(), "exactly what went in");
            sent.extend(ids(&b.records));
            s.commit(b.end.unwrap()).unwrap();
        }
        let mut s = Spool::open(dir.path(), small()).unwrap();
        assert_eq!(s.len(), 90);
        s.append(&(100..110).map(record).collect::<Vec<_>>()).unwrap();
        sent.extend(drain(&mut s, 7));
        assert_eq!(sent, (0..110).collect::<Vec<_>>());
    }

    #[test]
    fn survives_reopen_with_the_cursor() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), small()).unwrap();
            s.append(&(0..50).map(reading).collect::<Vec<_>>()).unwrap();
            s.append(&(50..60).map(reading).collect::<Vec<_>>()).unwrap();
            let b = s.read(25).unwrap();
            assert_eq!(ids(&b.records), (0..25).collect::<Vec<_>>());
            s.commit(b.end.unwrap()).unwrap();
            let b = s.read(5).unwrap(); // read but never acknowledged
            assert_eq!(b.records.len(), 5);
        }
        let mut s = Spool::open(dir.path(), small()).unwrap();
        assert_eq!(s.len(), 35);
        assert_eq!(drain(&mut s, 10), (25..60).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_write_is_cut_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let path;
        {
            let mut s = Spool::open(dir.path(), SpoolLimits::new(1 << 20)).unwrap();
            s.append(&(0..10).map(reading).collect::<Vec<_>>()).unwrap();
            path = s.segments[0].path.clone();
        }
        let len = fs::metadata(&path).unwrap().len();
        OpenOptions::new().write(true).open(&path).unwrap().set_len(len - 5).unwrap();
        let mut s = Spool::open(dir.path(), SpoolLimits::new(1 << 20)).unwrap();
        assert!(matches!(s.recoveries[..], [Recovery::TornTail { .. }]), "{:?}", s.recoveries);
        assert_eq!(s.len(), 9);
        s.append(&[reading(10)]).unwrap();
        assert_eq!(drain(&mut s, 100), [0, 1, 2, 3, 4, 5, 6, 7, 8, 10]);
    }

    #[test]
    fn a_flipped_bit_in_a_sealed_segment_costs_one_record() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), small()).unwrap();
            for i in 0..40 {
                s.append(&[reading(i)]).unwrap();
            }
        }
        let mut first: Vec<PathBuf> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_str().unwrap().ends_with(".seg"))
            .collect();
        first.sort();
        let mut bytes = fs::read(&first[0]).unwrap();
        bytes[8 + 30] ^= 0x10; // inside the second record
        fs::write(&first[0], bytes).unwrap();
        let mut s = Spool::open(dir.path(), small()).unwrap();
        let got = drain(&mut s, 1000);
        assert_eq!(got.len(), 39);
        assert!(!got.contains(&1));
        assert!(s.recoveries.iter().any(|r| matches!(r, Recovery::Damage { .. })));
    }

    #[test]
    fn full_spool_drops_the_oldest_segment() {
        let dir = tempfile::tempdir().unwrap();
        let limits = SpoolLimits { max_bytes: 4000, segment_bytes: 1000 };
        let mut s = Spool::open(dir.path(), limits).unwrap();
        let mut dropped = 0;
        for i in 0..200 {
            dropped += s.append(&[reading(i)]).unwrap();
        }
        assert!(s.bytes() <= 4000);
        assert!(dropped > 0);
        assert_eq!(dropped, s.dropped);
        let got = drain(&mut s, 50);
        assert_eq!(got.len() as u64 + dropped, 200, "every reading is sent or counted as dropped");
        assert_eq!(*got.last().unwrap(), 199, "the newest are kept");
        assert!(got.windows(2).all(|w| w[1] == w[0] + 1), "what is kept is contiguous");
    }

    #[test]
    fn a_damaged_cursor_replays_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Spool::open(dir.path(), small()).unwrap();
            s.append(&(0..5).map(reading).collect::<Vec<_>>()).unwrap();
            let b = s.read(2).unwrap();
            s.commit(b.end.unwrap()).unwrap();
        }
        fs::write(dir.path().join(CURSOR_FILE), b"garbage").unwrap();
        let mut s = Spool::open(dir.path(), small()).unwrap();
        assert_eq!(s.recoveries, [Recovery::CursorReset]);
        assert_eq!(drain(&mut s, 10), [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_foreign_file_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("0000000000000001.seg"), b"hello world").unwrap();
        let mut s = Spool::open(dir.path(), small()).unwrap();
        assert!(matches!(s.recoveries[..], [Recovery::NotASegment { .. }]));
        assert!(s.is_empty());
        s.append(&[reading(1)]).unwrap();
        assert_eq!(drain(&mut s, 10), [1]);
        assert!(dir.path().join("0000000000000001.damaged").exists());
    }

    #[test]
    fn segment_names() {
        assert_eq!(parse_segment_name("0000000000000007.seg"), Some((7, None)));
        assert_eq!(parse_segment_name("0000000000000007.123.seg"), Some((7, Some(123))));
        assert_eq!(parse_segment_name("cursor"), None);
        assert_eq!(parse_segment_name("x.seg"), None);
        assert_eq!(parse_segment_name(&segment_name(9, Some(3))), Some((9, Some(3))));
    }

    fn syncs() -> (u64, u64) {
        SYNCS.with(|c| c.get())
    }

    /// A new segment, a sealed one and a moved cursor survive a power cut: each is synced to
    /// its file and its folder entry synced too.
    #[test]
    fn segment_create_seal_and_cursor_are_synced_to_file_and_folder() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), small()).unwrap();
        let (f0, d0) = syncs();
        s.append(&[reading(0)]).unwrap();
        let (f1, d1) = syncs();
        assert_eq!((f1 - f0, d1 - d0), (1, 1), "segment created: its header and its name");
        let mut i = 1;
        while s.segments.len() < 2 {
            s.append(&[reading(i)]).unwrap();
            i += 1;
        }
        let (f2, d2) = syncs();
        assert_eq!((f2 - f1, d2 - d1), (2, 2), "sealed (data, rename) and the next created");
        let b = s.read(1).unwrap();
        s.commit(b.end.unwrap()).unwrap();
        let (f3, d3) = syncs();
        assert_eq!((f3 - f2, d3 - d2), (1, 1), "cursor written, synced, renamed, folder synced");
        assert!(fs::read(dir.path().join(CURSOR_FILE)).is_ok_and(|b| decode_cursor(&b).is_some()));
    }
}
