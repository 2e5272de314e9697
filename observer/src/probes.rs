//! Finds the probe functions in a proxy's executable: from the `.note.mcp_probes` ELF
//! note first (it survives `strip`), from the symbol table otherwise.

use std::path::{Path, PathBuf};

use object::{
    Object as _, ObjectSection as _, ObjectSegment as _, ObjectSymbol as _,
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

/// Reads the probe table of the executable that `pid` runs.
pub fn for_pid(pid: u32) -> Result<ProbeTable, ObserveError> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    if !proc.exists() {
        return Err(ObserveError::NoSuchProcess { pid });
    }
    let exe = proc.join("exe");
    let unreadable = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::NotFound => ObserveError::NoExecutable { pid },
        _ => ObserveError::ExeUnreadable { pid, source },
    };
    let path = std::fs::read_link(&exe).map_err(unreadable)?;
    let data = std::fs::read(&exe).map_err(unreadable)?;
    let table =
        from_elf(&data, &path).map_err(|reason| ObserveError::BadElf { pid, path: path.clone(), reason })?;
    let Some(table) = table else {
        return Err(ObserveError::NoProbes { pid, path });
    };
    if table.abi_version != mcp_abi::VERSION {
        return Err(ObserveError::AbiMismatch { pid, path, found: table.abi_version });
    }
    if let Some(probe) = REQUIRED.iter().find(|name| table.site(name).is_none()) {
        return Err(ObserveError::MissingProbe { pid, path, probe });
    }
    Ok(table)
}

/// Parses an ELF executable; `Ok(None)` when it has no probes at all.
pub fn from_elf(data: &[u8], path: &Path) -> Result<Option<ProbeTable>, String> {
    let file = ElfFile64::<object::Endianness>::parse(data).map_err(|e| e.to_string())?;
    let found = match from_note(&file)? {
        Some(found) => Some((found, Source::Note)),
        None => from_symbols(&file).map(|found| (found, Source::Symbols)),
    };
    let Some(((abi_version, raw), source)) = found else { return Ok(None) };
    // A probe the linker discarded (never called) keeps its note with a tombstone address
    // that lies in no segment: it is absent, not an error.
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

fn from_note(file: &ElfFile64<'_, object::Endianness>) -> Result<Option<RawProbes>, String> {
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

fn from_symbols(file: &ElfFile64<'_, object::Endianness>) -> Option<RawProbes> {
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

fn file_offset(file: &ElfFile64<'_, object::Endianness>, address: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (address >= start && address < start + size).then(|| address - start + offset)
    })
}
