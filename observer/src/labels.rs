//! Label values from MCP clients (tool names, identities, even methods) are untrusted: the
//! kernel side already bounds their length; here invalid UTF-8 is escaped, identities are
//! kept, dropped or hashed, tools may be restricted to an allowlist, and the number of
//! distinct values per label is capped, the rest folded into `__other__`.

use std::collections::HashSet;

use observer_common::field;
use sha2::{Digest as _, Sha256};

pub const OTHER: &str = "__other__";

/// Turns bytes into a label value: valid UTF-8 as is, every invalid byte as `\xNN`.
pub fn escape_utf8(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for byte in chunk.invalid() {
            out.push_str(&format!("\\x{byte:02x}"));
        }
    }
    out
}

/// What to do with the `identity` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IdentityMode {
    /// Keep identities as the proxy reports them.
    Keep,
    /// Replace every identity by the empty string (no per-identity series at all).
    Drop,
    /// Replace each identity by `sha256:` and 16 hex digits of SHA-256(salt ‖ identity).
    Hash,
}

/// How label values are admitted.
#[derive(Clone, Debug)]
pub struct LabelConfig {
    /// Distinct values kept per label, in `observer_common::field` order.
    pub max_values: [usize; field::COUNT],
    /// When set, only these tools keep their name; every other tool becomes `__other__`.
    pub tool_allowlist: Option<HashSet<String>>,
    pub identity: IdentityMode,
    /// Prepended to identities before hashing, so that names cannot be guessed back.
    pub identity_salt: String,
}

/// The label values admitted so far, one set per label.
#[derive(Debug)]
pub struct LabelPolicy {
    config: LabelConfig,
    seen: [HashSet<String>; field::COUNT],
}

impl LabelPolicy {
    pub fn new(config: LabelConfig) -> Self {
        Self { config, seen: Default::default() }
    }

    /// The value to use for the bytes of string slot `field`, and whether it was folded
    /// into [`OTHER`]. The empty value ("does not apply") is always kept and never counted.
    pub fn admit(&mut self, field: usize, bytes: &[u8]) -> (String, bool) {
        if bytes.is_empty() {
            return (String::new(), false);
        }
        let value = match (field, self.config.identity) {
            (field::IDENTITY, IdentityMode::Drop) => return (String::new(), false),
            (field::IDENTITY, IdentityMode::Hash) => self.hash_identity(bytes),
            _ => escape_utf8(bytes),
        };
        if field == field::TOOL
            && let Some(allowed) = &self.config.tool_allowlist
            && !allowed.contains(&value)
        {
            return (OTHER.to_string(), true);
        }
        let seen = &mut self.seen[field];
        if seen.contains(&value) {
            return (value, false);
        }
        if seen.len() < self.config.max_values[field] {
            seen.insert(value.clone());
            return (value, false);
        }
        (OTHER.to_string(), true)
    }

    fn hash_identity(&self, identity: &[u8]) -> String {
        let digest = Sha256::new()
            .chain_update(self.config.identity_salt.as_bytes())
            .chain_update(identity)
            .finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(max: usize, identity: IdentityMode, tools: Option<&[&str]>) -> LabelPolicy {
        LabelPolicy::new(LabelConfig {
            max_values: [max; field::COUNT],
            tool_allowlist: tools.map(|t| t.iter().map(|s| s.to_string()).collect()),
            identity,
            identity_salt: "salt".into(),
        })
    }

    #[test]
    fn invalid_utf8_is_escaped_and_valid_text_kept() {
        assert_eq!(escape_utf8(b"caf\xc3\xa9"), "café");
        assert_eq!(escape_utf8(b"a\xffb\xc3"), "a\\xffb\\xc3");
    }

    #[test]
    fn values_past_the_cap_fold_into_other_but_empty_is_always_kept() {
        let mut labels = policy(2, IdentityMode::Keep, None);
        assert_eq!(labels.admit(field::TOOL, b"a"), ("a".into(), false));
        assert_eq!(labels.admit(field::TOOL, b"b"), ("b".into(), false));
        assert_eq!(labels.admit(field::TOOL, b"c"), (OTHER.into(), true));
        assert_eq!(labels.admit(field::TOOL, b"a"), ("a".into(), false));
        assert_eq!(labels.admit(field::TOOL, b""), (String::new(), false));
        assert_eq!(labels.admit(field::SERVER, b"c"), ("c".into(), false), "caps are per label");
    }

    #[test]
    fn tools_outside_the_allowlist_fold_into_other() {
        let mut labels = policy(10, IdentityMode::Keep, Some(&["echo"]));
        assert_eq!(labels.admit(field::TOOL, b"echo"), ("echo".into(), false));
        assert_eq!(labels.admit(field::TOOL, b"rm_rf"), (OTHER.into(), true));
    }

    #[test]
    fn identities_can_be_dropped_or_hashed() {
        let mut dropped = policy(10, IdentityMode::Drop, None);
        assert_eq!(dropped.admit(field::IDENTITY, b"alice"), (String::new(), false));
        let mut hashed = policy(10, IdentityMode::Hash, None);
        let (alice, _) = hashed.admit(field::IDENTITY, b"alice");
        assert!(alice.starts_with("sha256:") && alice.len() == 7 + 16, "{alice}");
        assert!(!alice.contains("alice"));
        assert_eq!(hashed.admit(field::IDENTITY, b"alice").0, alice, "stable");
        assert_ne!(hashed.admit(field::IDENTITY, b"bob").0, alice);
    }
}
