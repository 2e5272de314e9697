//! Label values from MCP clients (tool names, identities) are untrusted: the kernel side
//! already bounds their length; here invalid UTF-8 is escaped and the number of distinct
//! values per label is capped, the rest folded into `__other__`.

use std::collections::HashSet;

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

/// Admits at most `cap` distinct values of one label.
#[derive(Debug)]
pub struct CappedLabel {
    cap: usize,
    seen: HashSet<String>,
}

impl CappedLabel {
    pub fn new(cap: usize) -> Self {
        Self { cap, seen: HashSet::new() }
    }

    /// The value to use for `value`, and whether it was folded into [`OTHER`].
    pub fn admit(&mut self, value: String) -> (String, bool) {
        if self.seen.contains(&value) {
            return (value, false);
        }
        if self.seen.len() < self.cap {
            self.seen.insert(value.clone());
            return (value, false);
        }
        (OTHER.to_string(), true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_is_escaped_and_valid_text_kept() {
        assert_eq!(escape_utf8(b"caf\xc3\xa9"), "café");
        assert_eq!(escape_utf8(b"a\xffb\xc3"), "a\\xffb\\xc3");
    }

    #[test]
    fn values_past_the_cap_fold_into_other() {
        let mut label = CappedLabel::new(2);
        assert_eq!(label.admit("a".into()), ("a".into(), false));
        assert_eq!(label.admit("b".into()), ("b".into(), false));
        assert_eq!(label.admit("c".into()), (OTHER.into(), true));
        assert_eq!(label.admit("a".into()), ("a".into(), false));
    }
}
