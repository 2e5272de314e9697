//! Finds the probe functions in a proxy's executable: from the `.note.mcp_probes` ELF
//! note first (it survives `strip`), from the symbol table otherwise.

use std::{
    fs::File,
    os::{fd::AsRawFd as _, unix::fs::FileExt as _},
    path::{Path, PathBuf},
};

use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _, ReadCache, ReadRef, SegmentFlags,
    elf::FileHeader64,
    read::elf::{ElfFile64, NoteIterator},
};

use crate::error::{ObserveError, mcp_abi};

/// The probes this observer attaches, with the eBPF program handling each. Starts come
/// before their ends: the loader attaches in reverse order.
pub const CATALOGUE: &[(&str, &str)] = &[
    ("request_start", "mcp_request_start"),
    ("request_end", "mcp_request_end"),
    ("backend_connect_start", "mcp_backend_connect_start"),
    ("backend_connect_end", "mcp_backend_connect_end"),
    ("backend_disconnect", "mcp_backend_disconnect"),
    ("session_open", "mcp_session_open"),
    ("session_close", "mcp_session_close"),
    ("acl_decision", "mcp_acl_decision"),
    ("auth_failure", "mcp_auth_failure"),
    ("backends_configured", "mcp_backends_configured"),
    ("idle_reaper_run", "mcp_idle_reaper_run"),
    ("tool_cache_size", "mcp_tool_cache_size"),
    ("classifier_cache", "mcp_classifier_cache"),
    ("child_spawn", "mcp_child_spawn"),
];

/// Probes every proxy must have: without them there are no request metrics at all. A
/// proxy that never calls another probe may lack it; its metrics then stay empty.
pub const REQUIRED: &[&str] = &["request_start", "request_end"];

/// Whether `probe` is attached: `request_start` only when request latency is measured.
pub fn attached_when(probe: &str, request_latency: bool) -> bool {
    request_latency || probe != "request_start"
}

/// Where the probe table came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Note,
    Symbols,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Source::Note => mcp_abi::NOTE_SECTION,
            Source::Symbols => "symbol table",
        })
    }
}

/// One probe function in the executable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeSite {
    /// Probe name without the `mcp_probe_` prefix, e.g. `request_start`.
    pub name: String,
    /// Link-time virtual address.
    pub address: u64,
    /// Offset in the file, as the kernel's uprobe wants it.
    pub file_offset: u64,
}

/// The probes found in one executable.
#[derive(Clone, Debug)]
pub struct ProbeTable {
    pub path: PathBuf,
    pub abi_version: u32,
    pub source: Source,
    pub sites: Vec<ProbeSite>,
}

impl ProbeTable {
    pub fn site(&self, name: &str) -> Option<&ProbeSite> {
        self.sites.iter().find(|s| s.name == name)
    }
}

/// The first bytes of every probe function of ABI v1 (the 5-byte NOP; `nop` on aarch64).
#[cfg(target_arch = "aarch64")]
const PROBE_PROLOGUE: &[u8] = &[0x1f, 0x20, 0x03, 0xd5];
#[cfg(not(target_arch = "aarch64"))]
const PROBE_PROLOGUE: &[u8] = &[0x0f, 0x1f, 0x44, 0x00, 0x00];

/// The executable a process runs, opened once: its probe table, its identity and the path
/// the kernel places uprobes through all name this very file, even if the process execs
/// or its pid is reused meanwhile.
pub struct Executable {
    file: File,
    /// As /proc/PID/exe shows it.
    pub path: PathBuf,
    pub meta: std::fs::Metadata,
    /// The process's start time, read before the file was opened: a pid reused since
    /// then shows another one.
    pub start_time: u64,
}

/// Where a probe table is looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Search {
    /// The note, then the symbol table, in the whole file read at once: a `--pid` the
    /// operator named.
    Thorough,
    /// The note alone, reading the headers and that section only: every program the
    /// node-wide agent sees start. ABI v1 always emits the note; a symbol walk through a
    /// lazily read file would cost a crafted ELF's names many times its size in memory.
    NoteOnly,
}

impl Executable {
    pub fn of(pid: u32) -> Result<Self, ObserveError> {
        let proc = crate::tree::proc_path(pid);
        if !proc.exists() {
            return Err(ObserveError::NoSuchProcess { pid });
        }
        let exe = proc.join("exe");
        let unreadable = |source: std::io::Error| match source.kind() {
            std::io::ErrorKind::NotFound => ObserveError::NoExecutable { pid },
            _ => ObserveError::ExeUnreadable { pid, source },
        };
        let start_time = crate::tree::start_time(pid).ok_or(ObserveError::NoSuchProcess { pid })?;
        let file = File::open(&exe).map_err(unreadable)?;
        let meta = file.metadata().map_err(unreadable)?;
        let mut executable = Self { file, path: PathBuf::new(), meta, start_time };
        // The path of the open file, not of what /proc/PID/exe shows by now.
        executable.path = std::fs::read_link(executable.fd_path()).map_err(unreadable)?;
        Ok(executable)
    }

    /// This open file as a path for the kernel.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn fd_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }

    /// The probes of this file (`pid` runs it), each checked to begin as a probe does
    /// before anyone places a uprobe there.
    pub fn table(&self, pid: u32, search: Search) -> Result<ProbeTable, ObserveError> {
        let path = &self.path;
        let bad = |reason| ObserveError::BadElf { pid, path: path.clone(), reason };
        let table = match search {
            Search::NoteOnly => from_elf(&ReadCache::new(&self.file), path, false),
            Search::Thorough => {
                let mut data = vec![0; usize::try_from(self.meta.len()).map_err(|e| bad(e.to_string()))?];
                self.file.read_exact_at(&mut data, 0).map_err(|e| bad(e.to_string()))?;
                from_elf(&data[..], path, true)
            }
        }
        .map_err(bad)?;
        let Some(table) = table else {
            return Err(ObserveError::NoProbes { pid, path: path.clone() });
        };
        if table.abi_version != mcp_abi::VERSION {
            return Err(ObserveError::AbiMismatch { pid, path: path.clone(), found: table.abi_version });
        }
        if let Some(probe) = REQUIRED.iter().find(|name| table.site(name).is_none()) {
            return Err(ObserveError::MissingProbe { pid, path: path.clone(), probe });
        }
        for site in &table.sites {
            let mut first = [0; PROBE_PROLOGUE.len()];
            if self.file.read_exact_at(&mut first, site.file_offset).is_err() || first != PROBE_PROLOGUE {
                return Err(ObserveError::NotAProbe {
                    pid,
                    path: path.clone(),
                    probe: site.name.clone(),
                    offset: site.file_offset,
                });
            }
        }
        Ok(table)
    }
}

/// Reads the probe table of the executable that `pid` runs.
pub fn for_pid(pid: u32) -> Result<ProbeTable, ObserveError> {
    Executable::of(pid)?.table(pid, Search::Thorough)
}

/// Parses an ELF executable (its symbol table too if `symbols`); `Ok(None)` when it has
/// no probes at all.
pub fn from_elf<'d, R: ReadRef<'d>>(
    data: R,
    path: &Path,
    symbols: bool,
) -> Result<Option<ProbeTable>, String> {
    let file = ElfFile64::<object::Endianness, R>::parse(data).map_err(|e| e.to_string())?;
    let found = match from_note(&file)? {
        Some(found) => Some((found, Source::Note)),
        None if symbols => from_symbols(&file).map(|found| (found, Source::Symbols)),
        None => None,
    };
    let Some(((abi_version, raw), source)) = found else { return Ok(None) };
    // A probe the linker discarded (never called) keeps its note with a tombstone address
    // (0): it is absent, not an error.
    let sites = raw
        .into_iter()
        .filter_map(|(name, address)| {
            let file_offset = file_offset(&file, address)?;
            Some(ProbeSite { name, address, file_offset })
        })
        .collect();
    Ok(Some(ProbeTable { path: path.to_path_buf(), abi_version, source, sites }))
}

type RawProbes = (u32, Vec<(String, u64)>);

fn from_note<'d, R: ReadRef<'d>>(
    file: &ElfFile64<'d, object::Endianness, R>,
) -> Result<Option<RawProbes>, String> {
    let Some(section) = file.section_by_name(mcp_abi::NOTE_SECTION) else { return Ok(None) };
    let data = section.data().map_err(|e| e.to_string())?;
    let bad = |e: object::Error| format!("{}: {e}", mcp_abi::NOTE_SECTION);
    let mut notes =
        NoteIterator::<FileHeader64<object::Endianness>>::new(file.endian(), 4, data).map_err(bad)?;
    let mut abi_version = None;
    let mut probes = Vec::new();
    while let Some(note) = notes.next().map_err(bad)? {
        if note.name() != mcp_abi::NOTE_OWNER {
            continue;
        }
        let desc = note.desc();
        match note.n_type(file.endian()).0 {
            mcp_abi::NOTE_ABI if desc.len() >= 4 => {
                abi_version = Some(u32::from_le_bytes(desc[..4].try_into().expect("4 bytes")));
            }
            mcp_abi::NOTE_PROBE if desc.len() > 8 => {
                let address = u64::from_le_bytes(desc[..8].try_into().expect("8 bytes"));
                let name = desc[8..].split(|&b| b == 0).next().unwrap_or_default();
                probes.push((String::from_utf8_lossy(name).into_owned(), address));
            }
            _ => {}
        }
    }
    let abi_version =
        abi_version.ok_or_else(|| format!("{} has no ABI version note", mcp_abi::NOTE_SECTION))?;
    Ok(Some((abi_version, probes)))
}

fn from_symbols<'d, R: ReadRef<'d>>(file: &ElfFile64<'d, object::Endianness, R>) -> Option<RawProbes> {
    let mut marker = false;
    let mut probes = Vec::new();
    for symbol in file.symbols().chain(file.dynamic_symbols()) {
        let Ok(name) = symbol.name() else { continue };
        if name == mcp_abi::MARKER_SYMBOL {
            marker = true;
        } else if let Some(probe) = name.strip_prefix(mcp_abi::SYMBOL_PREFIX)
            && symbol.address() != 0
            && !probes.iter().any(|(n, _)| n == probe)
        {
            probes.push((probe.to_string(), symbol.address()));
        }
    }
    // Probes without the marker predate ABI v1 or are someone else's symbols.
    (marker || !probes.is_empty()).then_some((if marker { mcp_abi::VERSION } else { 0 }, probes))
}

/// Where the code at `address` lies in the file, if it lies in an executable segment.
/// Address 0 is the linkers' tombstone, never a probe: where the headers share the first,
/// executable segment with the code (aarch64's default), it would lie inside one.
fn file_offset<'d, R: ReadRef<'d>>(file: &ElfFile64<'d, object::Endianness, R>, address: u64) -> Option<u64> {
    if address == 0 {
        return None;
    }
    file.segments().find_map(|segment| {
        let SegmentFlags::Elf { p_flags, .. } = segment.flags() else { return None };
        if !p_flags.contains(object::elf::PF_X) {
            return None;
        }
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (address >= start && address < start + size).then(|| address - start + offset)
    })
}

#[cfg(test)]
mod tests {
    use object::ObjectSymbol as _;

    use super::*;

    #[test]
    fn the_note_of_a_binary_built_with_mcp_probes_locates_its_probes_code() {
        // This test binary calls a probe, so it links mcp-probes and carries its note.
        mcp_probes::idle_reaper_run();
        let exe = std::fs::read("/proc/self/exe").expect("reading this test binary");
        let table = from_elf(&*exe, Path::new("/proc/self/exe"), false).unwrap().expect("a probe table");
        assert_eq!((table.abi_version, table.source), (mcp_abi::VERSION, Source::Note));
        let site = table.site("idle_reaper_run").expect("the probe this test calls");
        // The note's address is the symbol table's for the function...
        let file = ElfFile64::<object::Endianness, _>::parse(&*exe).unwrap();
        let symbol =
            file.symbols().find(|s| s.name() == Ok("mcp_probe_idle_reaper_run")).expect("its symbol");
        assert_eq!(site.address, symbol.address());
        // ...and its file offset holds the code that runs.
        let running = mcp_probes::mcp_probe_idle_reaper_run as *const u8;
        // SAFETY: reading the first bytes of a function's code, mapped readable.
        let code = unsafe { std::slice::from_raw_parts(running, 8) };
        let offset = usize::try_from(site.file_offset).unwrap();
        assert_eq!(&exe[offset..offset + 8], code);
    }

    #[test]
    fn mcp_probes_packs_request_labels_within_the_caps_the_kernel_keeps() {
        // mcp-probes lays labels within these caps back to back for one kernel read.
        assert_eq!(mcp_probes::LABEL_CAPS, observer_common::CAPS);
    }

    #[test]
    fn a_binary_without_probes_has_no_table() {
        let sh = std::fs::read("/bin/sh").expect("reading /bin/sh");
        assert!(from_elf(&*sh, Path::new("/bin/sh"), true).unwrap().is_none());
        assert!(from_elf(&b"not an ELF file"[..], Path::new("x"), true).is_err());
    }
}
