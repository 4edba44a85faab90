//! Giving back the pages the start touched.
//!
//! `pmtr run` reads its configuration, parses its command line, checks every trigger
//! expression and sets up its sinks once; the code and tables that do it (the configuration
//! loader alone is a few hundred kilobytes of machine code) stay mapped in the process
//! afterwards, and so does every page the kernel mapped around them (it maps up to 64 KiB
//! around a page fault in a file, and reads ahead). Measured on the footprint set-up, 6.2 MiB
//! of the executable's code was resident and 1.0 MiB of it touched in the next 20 s
//! (`/proc/PID/smaps` after `clear_refs`).
//!
//! [`give_back`] unmaps (`MADV_DONTNEED`) every read-only mapping of a file that holds no
//! page of its own (no copy-on-write page: `Anonymous: 0 kB` in `/proc/self/smaps`). Such a
//! page is the file's page as it is on disk, so a later touch maps it again from the page
//! cache with the same content: nothing is lost, whatever the page held. A mapping the loader
//! wrote to (the relocated `.data.rel.ro`, read-only after relocation but holding private
//! copies), a writable one, a locked one, a device's and an anonymous one are never touched.
//! The pages stay in the page cache, where the kernel reclaims them as it reclaims any file's
//! under memory pressure; the heap's free memory goes back with `malloc_trim(3)`.
//!
//! What comes back is what the daemon touches, and the kernel maps it with its neighbours
//! (fault-around: 64 KiB, or a whole large folio on kernels that keep a file in large folios),
//! so the gain is measured, not computed: BENCHMARKS.md, "Footprint". The neighbours are the
//! steady state's own code, since the linker lays those functions out together
//! (`link/hot-text.ld`, given to the linker by `build.rs`): 8.0–9.6 MiB resident without, 5.2–5.7
//! MiB with. Evicting the pages from
//! the page cache as well (`MADV_PAGEOUT`, `POSIX_FADV_DONTNEED`, no read-ahead) was measured
//! and gave little more on the development kernel (8.0–8.7 MiB against 8.8–9.2), for a read
//! from disk at the next touch of a page: not done. As the pages stay cached, a path taken
//! again (a relay's first switch) costs at most a minor page fault.
//!
//! [`trimmable`] decides, from the text of `/proc/self/smaps`, without a system call; the
//! daemon gives back [`SETTLE`] after each start and reload, and every [`EVERY`].

use std::time::Duration;

/// How long after a start or a reload the pages are given back: the first poll of every
/// meter, the first write of every sink and the status API's first answers have touched what
/// they need by then (and map it again at a page fault each if not).
pub const SETTLE: Duration = Duration::from_secs(5);

/// How often the pages touched since (an hourly file, a mail, a reload) are given back.
pub const EVERY: Duration = Duration::from_secs(3600);

/// A range of addresses `[start, end)`, page-aligned as `/proc/self/smaps` gives them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub start: usize,
    /// One past the last.
    pub end: usize,
    /// Its resident size when read, KiB.
    pub rss_kib: u64,
}

/// The mappings of `smaps` (the text of `/proc/PID/smaps`) whose pages can be dropped and
/// mapped again from their file unchanged: a file's mapping (a path, not deleted), read-only,
/// no anonymous (copy-on-write) page, not locked, not a device's (`io`, `pf`), resident.
pub fn trimmable(smaps: &str) -> Vec<Range> {
    fn done(m: &Mapping<'_>, out: &mut Vec<Range>) {
        let Some((start, end)) = m.range else { return };
        let file = m.path.starts_with('/') && !m.path.ends_with("(deleted)");
        if file && m.readonly && m.anonymous == Some(0) && m.rss > 0 && m.flags_seen && !m.excluded_flags {
            out.push(Range { start, end, rss_kib: m.rss });
        }
    }
    let mut out = vec![];
    let mut current: Option<Mapping<'_>> = None;
    for line in smaps.lines() {
        if let Some(header) = mapping_header(line) {
            if let Some(m) = current.take() {
                done(&m, &mut out);
            }
            current = Some(header);
            continue;
        }
        let Some(m) = current.as_mut() else { continue };
        if let Some(v) = field_kib(line, "Anonymous:") {
            m.anonymous = Some(v);
        } else if let Some(v) = field_kib(line, "Rss:") {
            m.rss = v;
        } else if let Some(flags) = line.strip_prefix("VmFlags:") {
            m.flags_seen = true;
            m.excluded_flags = flags.split_whitespace().any(|f| matches!(f, "lo" | "io" | "pf" | "wr"));
        }
    }
    if let Some(m) = current.take() {
        done(&m, &mut out);
    }
    out
}

/// One mapping of `/proc/PID/smaps`, as its lines are read.
struct Mapping<'a> {
    range: Option<(usize, usize)>,
    readonly: bool,
    path: &'a str,
    anonymous: Option<u64>,
    rss: u64,
    excluded_flags: bool,
    flags_seen: bool,
}

/// A mapping's first line: `start-end perms offset dev inode [path]`. `None` for a field line.
fn mapping_header(line: &str) -> Option<Mapping<'_>> {
    let mut parts = line.splitn(6, ' ');
    let range = parts.next()?;
    let (a, b) = range.split_once('-')?;
    let start = usize::from_str_radix(a, 16).ok()?;
    let end = usize::from_str_radix(b, 16).ok()?;
    let perms = parts.next()?;
    if perms.len() != 4 {
        return None;
    }
    let p = perms.as_bytes();
    let readonly = p[0] == b'r' && p[1] == b'-';
    let path = parts.nth(3).unwrap_or("").trim();
    Some(Mapping {
        range: Some((start, end)).filter(|(s, e)| s < e),
        readonly,
        path,
        anonymous: None,
        rss: 0,
        excluded_flags: false,
        flags_seen: false,
    })
}

fn field_kib(line: &str, name: &str) -> Option<u64> {
    let rest = line.strip_prefix(name)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// What [`give_back`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GivenBack {
    /// Mappings dropped.
    pub mappings: usize,
    /// Their resident size before, KiB.
    pub mapped_kib: u64,
    /// The process's resident size before and after, KiB (0: not read).
    pub rss_before_kib: u64,
    /// After.
    pub rss_after_kib: u64,
}

/// Drops this process's mapping of the pages [`trimmable`] finds and gives the heap's free
/// memory back. Blocking (it reads `/proc/self/smaps`): call it off the runtime's thread.
pub fn give_back() -> std::io::Result<GivenBack> {
    use nix::libc::{c_void, madvise, MADV_DONTNEED};
    let rss_before_kib = rss_kib();
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let mut given = GivenBack { rss_before_kib, ..GivenBack::default() };
    for r in trimmable(&smaps) {
        // SAFETY: the range is a whole mapping of this process, read-only, backed by a file,
        // with no private page: dropping it only unmaps pages that the next touch maps again
        // from the same file with the same content. No reference into it is invalidated.
        let rc = unsafe { madvise(r.start as *mut c_void, r.end - r.start, MADV_DONTNEED) };
        if rc == 0 {
            given.mappings += 1;
            given.mapped_kib += r.rss_kib;
        }
    }
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's arenas to the kernel.
    unsafe {
        nix::libc::malloc_trim(0);
    }
    given.rss_after_kib = rss_kib();
    Ok(given)
}

/// The process's resident size, KiB, from `/proc/self/statm` (0 when it cannot be read).
pub fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    pages * page_size() as u64 / 1024
}

/// The size of a page, bytes.
fn page_size() -> usize {
    // SAFETY: sysconf has no precondition.
    let page = unsafe { nix::libc::sysconf(nix::libc::_SC_PAGESIZE) };
    usize::try_from(page).ok().filter(|&p| p > 0).unwrap_or(4096)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
5598a0000000-5598a0370000 r--p 00000000 08:01 1234 /usr/bin/pmtr
Size:               3520 kB
Rss:                1200 kB
Private_Dirty:         0 kB
Anonymous:             0 kB
VmFlags: rd mr mw me dw sd
5598a0370000-5598a0dc0000 r-xp 00370000 08:01 1234 /usr/bin/pmtr
Size:              10560 kB
Rss:                6204 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me dw sd
5598a0dc0000-5598a0f50000 r--p 00dc0000 08:01 1234 /usr/bin/pmtr
Size:               1600 kB
Rss:                1400 kB
Anonymous:          1350 kB
VmFlags: rd mr mw me dw ac sd
5598a0f50000-5598a0f58000 rw-p 00f50000 08:01 1234 /usr/bin/pmtr
Size:                 32 kB
Rss:                  32 kB
Anonymous:            20 kB
VmFlags: rd wr mr mw me dw ac sd
5598a1000000-5598a1200000 rw-p 00000000 00:00 0                          [heap]
Size:               2048 kB
Rss:                1284 kB
Anonymous:          1284 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000100000 r-xp 00028000 08:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
Size:               1024 kB
Rss:                1064 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0000200000-7f0000201000 r--p 00000000 08:01 77 /etc/old.conf (deleted)
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd mr mw me sd
7f0000300000-7f0000310000 r--s 00000000 00:05 12 /dev/gpiomem
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd mr mw me io pf sd
7f0000400000-7f0000410000 r-xp 00000000 08:01 55 /usr/lib/locked.so
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me lo sd
7f0000500000-7f0000510000 r-xp 00000000 08:01 56 /usr/lib/cold.so
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0                          [vdso]
Size:                  8 kB
Rss:                   8 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me de sd
";

    #[test]
    fn only_unwritten_read_only_file_pages_are_trimmable() {
        let r = trimmable(SMAPS);
        let starts: Vec<usize> = r.iter().map(|r| r.start).collect();
        assert_eq!(
            starts,
            vec![0x5598a0000000, 0x5598a0370000, 0x7f0000000000],
            "the executable's read-only data and code and the C library's code, nothing else: {r:?}"
        );
        assert_eq!(r[1].end, 0x5598a0dc0000);
        assert_eq!(r[1].rss_kib, 6204);
    }

    #[test]
    fn a_mapping_without_its_anonymous_or_flags_line_is_left_alone() {
        // A kernel that does not say whether a mapping has private pages: keep it.
        let smaps = "\
5598a0370000-5598a0dc0000 r-xp 00370000 08:01 1234 /usr/bin/pmtr
Rss:                6204 kB
VmFlags: rd ex mr mw me dw sd
5598a0dc0000-5598a0f50000 r--p 00dc0000 08:01 1234 /usr/bin/pmtr
Rss:                1400 kB
Anonymous:             0 kB
";
        assert_eq!(trimmable(smaps), vec![]);
        assert_eq!(trimmable("garbage\n-\nzz-yy r-xp\n"), vec![]);
        assert_eq!(trimmable(""), vec![]);
    }

    static RELOCATED: &str = "a pointer the loader wrote";
    static WRITABLE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    #[test]
    fn this_process_gives_back_its_code_and_keeps_its_relocated_data() {
        let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
        let ranges = trimmable(&smaps);
        let inside = |a: usize| ranges.iter().any(|r| r.start <= a && a < r.end);
        let code = only_unwritten_read_only_file_pages_are_trimmable as fn() as usize;
        assert!(inside(code), "this test's own code is in a trimmable mapping: {ranges:?}");
        let relocated = &RELOCATED as *const &str as usize;
        assert!(!inside(relocated), "a static holding a pointer (relocated at load) is never trimmed");
        let writable = &WRITABLE as *const _ as usize;
        assert!(!inside(writable), "a writable static is never trimmed");

        let given = give_back().expect("give back");
        assert!(given.mappings >= 1, "at least the executable's code: {given:?}");
        // Still running on code mapped again from the file, with the data intact.
        WRITABLE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(RELOCATED, "a pointer the loader wrote");
        assert_eq!(trimmable(SMAPS).len(), 3);
        assert!(given.rss_before_kib > 0 && given.rss_after_kib > 0, "{given:?}");
    }
}
