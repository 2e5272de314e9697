//! tracefs: found or mounted, and the record layout of a tracepoint, parsed from its
//! `format` file (Rust eBPF has no CO-RE, so offsets are learnt
//! from the running kernel instead of compiled in).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use observer_common::ABSENT;

use crate::error::ObserveError;

/// Where tracefs lives: its own mount point first, the debugfs path of older systems next.
const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs mount, mounting it first when it is absent (tracepoints are attached by
/// their ids, which only tracefs tells).
pub fn ensure() -> Result<PathBuf, ObserveError> {
    if let Some(found) = find() {
        return Ok(found);
    }
    let target = MOUNTS[0];
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL");
    let (source, dir) = (c("tracefs"), c(target));
    // SAFETY: NUL-terminated strings that outlive the call; no mount data.
    let rc = unsafe { libc::mount(source.as_ptr(), dir.as_ptr(), source.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(ObserveError::TracefsAbsent {
            path: target.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    log::info!("mounted tracefs at {target}");
    find().ok_or_else(|| ObserveError::TracefsAbsent {
        path: target.into(),
        source: std::io::Error::other("mounted, but it has no events directory"),
    })
}

/// Where the hooks' `format` files are read: `tracefs`, or for tests the copy that
/// `MCP_OBSERVE_TRACEFS_FORMATS` names (a root holding `events/CATEGORY/NAME/format`), so
/// that a test can hide a tracepoint or change a field. Attaching still goes through the
/// real tracefs; a hook the copy hides is simply not loaded.
pub fn formats(tracefs: &Path) -> PathBuf {
    match std::env::var_os(FORMATS_ENV) {
        Some(copy) => {
            let copy = PathBuf::from(copy);
            log::warn!(
                "reading tracepoint formats from {} ({FORMATS_ENV}), not {}",
                copy.display(),
                tracefs.display()
            );
            copy
        }
        None => tracefs.to_path_buf(),
    }
}

const FORMATS_ENV: &str = "MCP_OBSERVE_TRACEFS_FORMATS";

/// The tracefs mount, if there is one.
pub fn find() -> Option<PathBuf> {
    MOUNTS.iter().map(PathBuf::from).find(|p| p.join("events").is_dir())
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Field {
    offset: u32,
    size: u32,
}

/// A parsed `format` file: its fields by name, and its print format.
pub struct Format {
    event: String,
    fields: HashMap<String, Field>,
    print: String,
}

impl Format {
    /// The format of tracepoint `category:name`; `None` when this kernel lacks it.
    pub fn read(tracefs: &Path, category: &str, name: &str) -> Result<Option<Self>, ObserveError> {
        let dir = tracefs.join("events").join(category).join(name);
        if !dir.is_dir() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(dir.join("format"))
            .map_err(|source| ObserveError::Tracepoint { event: format!("{category}:{name}"), source })?;
        Ok(Some(Self::parse(&format!("{category}:{name}"), &text)))
    }

    fn parse(event: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        let mut print = String::new();
        for line in text.lines() {
            let line = line.trim();
            if let Some(fmt) = line.strip_prefix("print fmt:") {
                print = fmt.to_string();
            }
            // `field:TYPE NAME[N];	offset:O;	size:S;	signed:B;`
            let mut parts = line.split(';').map(str::trim);
            let Some(decl) = parts.next().and_then(|p| p.strip_prefix("field:")) else { continue };
            let number = |key: &str, part: Option<&str>| part?.strip_prefix(key)?.parse::<u32>().ok();
            let (Some(offset), Some(size)) = (number("offset:", parts.next()), number("size:", parts.next()))
            else {
                continue;
            };
            let name = decl.rsplit(' ').next().unwrap_or(decl);
            let name = name.split('[').next().unwrap_or(name);
            fields.insert(name.to_string(), Field { offset, size });
        }
        Self { event: event.to_string(), fields, print }
    }

    /// The offset of field `name`, which must be `size` bytes wide.
    pub fn offset(&self, name: &'static str, size: u32) -> Result<u32, ObserveError> {
        match self.fields.get(name) {
            Some(field) if field.size == size => Ok(field.offset),
            found => Err(ObserveError::TracepointField {
                event: self.event.clone(),
                field: name,
                expected: size,
                found: found.map(|f| f.size),
            }),
        }
    }

    /// Like [`Self::offset`], [`ABSENT`] when the kernel's tracepoint lacks the field.
    pub fn optional(&self, name: &'static str, size: u32) -> Result<u32, ObserveError> {
        if self.fields.contains_key(name) { self.offset(name, size) } else { Ok(ABSENT) }
    }

    /// The number the print format's symbol table gives `symbol`: `{ 15, "SYMBOL" }`.
    pub fn symbol(&self, symbol: &str) -> Option<u32> {
        let at = self.print.find(&format!("\"{symbol}\""))?;
        let before = self.print[..at].trim_end().strip_suffix(',')?;
        let open = before.rfind('{')?;
        before[open + 1..].trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEND_RESET: &str = "name: tcp_send_reset
ID: 2280
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:enum sk_rst_reason reason;\toffset:28;\tsize:4;\tsigned:0;
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;

print fmt: \"reason=%s\", __print_symbolic(REC->reason, { 0, \"NOT_SPECIFIED\" }, { 14, \"TCP_STATE\" }, { 15, \"TCP_KEEPALIVE_TIMEOUT\" }, { 16, \"X\" })
";

    #[test]
    fn reads_offsets_sizes_arrays_and_symbols() {
        let format = Format::parse("tcp:tcp_send_reset", SEND_RESET);
        assert_eq!(format.offset("skaddr", 8).unwrap(), 16);
        assert_eq!(format.offset("reason", 4).unwrap(), 28);
        assert_eq!(format.offset("saddr", 28).unwrap(), 32);
        assert_eq!(format.symbol("TCP_KEEPALIVE_TIMEOUT"), Some(15));
        assert_eq!(format.symbol("NOT_SPECIFIED"), Some(0));
        assert_eq!(format.symbol("TCP_ABSENT"), None);
        assert_eq!(format.optional("sock_cookie", 8).unwrap(), ABSENT);
    }

    #[test]
    fn a_missing_or_resized_field_is_named() {
        let format = Format::parse("tcp:tcp_send_reset", SEND_RESET);
        let error = format.offset("skaddr", 4).unwrap_err().to_string();
        assert!(error.contains("tcp:tcp_send_reset") && error.contains("skaddr"), "{error}");
        assert!(format.offset("nope", 4).is_err());
    }

    #[test]
    fn an_older_kernels_exit_tracepoint_lacks_group_dead() {
        let exit = "name: sched_process_exit\nformat:\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n";
        let format = Format::parse("sched:sched_process_exit", exit);
        assert_eq!(format.optional("group_dead", 1).unwrap(), ABSENT);
        assert_eq!(format.offset("pid", 4).unwrap(), 24);
        let missing = Format::parse("syscalls:sys_enter_exit_group", "");
        assert_eq!(missing.optional("error_code", 8).unwrap(), ABSENT);
    }

    /// Reads this kernel's tracefs, which only root may: built with the kernel suite.
    #[cfg(feature = "kernel-tests")]
    #[test]
    fn this_kernels_formats_parse() {
        // Every kernel this runs on has tracefs at one of its paths once the tests set it up.
        let Some(tracefs) = find() else { panic!("tracefs is not mounted: run `cargo xtask setup` as root") };
        let plan = crate::hooks::Plan::probe(&tracefs).unwrap();
        assert_ne!(plan.layout.state_skaddr, plan.layout.state_sport);
        // 6.18: every hook and optional field is there.
        assert_eq!(plan.gaps().count(), 0, "{plan:?}");
        assert!(crate::hooks::timeouts_supported(&plan.layout));
        assert_ne!(plan.layout.process_exit_group_dead, ABSENT);
        assert_ne!(plan.layout.exit_group_error_code, ABSENT);
    }
}
