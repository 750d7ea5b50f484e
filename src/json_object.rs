//! A JSON object written member by member, for the access log's and the usage ledger's lines.
//!
//! `serde_json` escapes every key and every string byte by byte: ~7,000 instructions for an
//! access-log line, 7% of what a short stream cost Sluice (callgrind), and as much again for a
//! usage record. Here keys are the caller's literals, written as they are, and a string value is
//! copied whole unless it holds a byte JSON must escape (then `serde_json` writes it). Numbers go
//! through `serde_json` too, so the line is byte for byte what `serde_json` would make of the
//! same record.
//!
//! An absent value is either `null` (`*_or_null`, a field serde writes as `Option`) or left out
//! (`*_if_some`, a field with `skip_serializing_if`).

use std::net::SocketAddr;

pub struct JsonObject {
    out: Vec<u8>,
    /// Where this object's first member goes: a member written after it takes a comma.
    first_member_at: usize,
}

impl JsonObject {
    pub fn with_capacity(capacity: usize) -> Self {
        JsonObject::after(b"", capacity)
    }

    /// An object written after `prefix` (which [`JsonObject::finish`] returns with it).
    pub fn after(prefix: &[u8], capacity: usize) -> Self {
        let mut out = Vec::with_capacity(prefix.len() + capacity);
        out.extend_from_slice(prefix);
        out.push(b'{');
        let first_member_at = out.len();
        JsonObject {
            out,
            first_member_at,
        }
    }

    /// `key` must need no escaping (the callers' keys are plain lower-case literals).
    fn key(&mut self, key: &'static str) {
        debug_assert!(!needs_escape(key), "key {key:?} needs escaping");
        if self.out.len() > self.first_member_at {
            self.out.push(b',');
        }
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn string(&mut self, value: &str) {
        if needs_escape(value) {
            serde_json::to_writer(&mut self.out, value).expect("writing into a Vec");
        } else {
            self.out.push(b'"');
            self.out.extend_from_slice(value.as_bytes());
            self.out.push(b'"');
        }
    }

    fn number(&mut self, value: impl serde::Serialize) {
        serde_json::to_writer(&mut self.out, &value).expect("writing into a Vec");
    }

    pub fn str(&mut self, key: &'static str, value: &str) -> &mut Self {
        self.key(key);
        self.string(value);
        self
    }

    /// `null` when absent.
    pub fn str_or_null(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self.null(key),
        }
    }

    /// Left out when absent.
    pub fn str_if_some(&mut self, key: &'static str, value: Option<&str>) -> &mut Self {
        match value {
            Some(value) => self.str(key, value),
            None => self,
        }
    }

    /// `null` when absent. An address's text (`1.2.3.4:5`, `[::1]:5`) needs no escaping.
    pub fn addr_or_null(&mut self, key: &'static str, value: Option<SocketAddr>) -> &mut Self {
        let Some(addr) = value else {
            return self.null(key);
        };
        self.key(key);
        self.out.push(b'"');
        crate::addr_text::push_socket_addr(&mut self.out, addr);
        self.out.push(b'"');
        self
    }

    /// Left out when absent.
    pub fn addr_if_some(&mut self, key: &'static str, value: Option<SocketAddr>) -> &mut Self {
        match value {
            Some(addr) => self.addr_or_null(key, Some(addr)),
            None => self,
        }
    }

    /// An address's text needs no escaping.
    pub fn ip(&mut self, key: &'static str, value: std::net::IpAddr) -> &mut Self {
        self.key(key);
        self.out.push(b'"');
        crate::addr_text::push_ip(&mut self.out, value);
        self.out.push(b'"');
        self
    }

    pub fn u64(&mut self, key: &'static str, value: u64) -> &mut Self {
        self.key(key);
        self.number(value);
        self
    }

    /// Left out when absent.
    pub fn u64_if_some(&mut self, key: &'static str, value: Option<u64>) -> &mut Self {
        match value {
            Some(value) => self.u64(key, value),
            None => self,
        }
    }

    pub fn f64(&mut self, key: &'static str, value: f64) -> &mut Self {
        self.key(key);
        self.number(value);
        self
    }

    /// `null` when absent.
    pub fn f64_or_null(&mut self, key: &'static str, value: Option<f64>) -> &mut Self {
        match value {
            Some(value) => self.f64(key, value),
            None => self.null(key),
        }
    }

    /// Left out when absent.
    pub fn f64_if_some(&mut self, key: &'static str, value: Option<f64>) -> &mut Self {
        match value {
            Some(value) => self.f64(key, value),
            None => self,
        }
    }

    /// A nested object whose members `members` writes.
    pub fn object(
        &mut self,
        key: &'static str,
        members: impl FnOnce(&mut JsonObject),
    ) -> &mut Self {
        self.key(key);
        self.out.push(b'{');
        let outer = std::mem::replace(&mut self.first_member_at, self.out.len());
        members(self);
        self.first_member_at = outer;
        self.out.push(b'}');
        self
    }

    pub fn bool(&mut self, key: &'static str, value: bool) -> &mut Self {
        self.key(key);
        self.out
            .extend_from_slice(if value { b"true" } else { b"false" });
        self
    }

    fn null(&mut self, key: &'static str) -> &mut Self {
        self.key(key);
        self.out.extend_from_slice(b"null");
        self
    }

    /// The object, closed.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.push(b'}');
        self.out
    }
}

/// A byte JSON escapes in a string: control characters, `"` and `\` (RFC 8259 §7).
fn needs_escape(value: &str) -> bool {
    // No early exit: a branch-free pass over a short string is cheaper than one that stops.
    value.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_only_when_needed() {
        let mut object = JsonObject::with_capacity(64);
        object
            .str("plain", "/v1/chat/completions")
            .str("quoted", "say \"hi\"\\\n\u{1}é")
            .str_or_null("absent", None)
            .str_if_some("skipped", None)
            .object("inner", |o| {
                o.u64("a", 1).f64_if_some("b", None).f64("c", 0.5);
            })
            .object("empty", |_| {})
            .bool("yes", true);
        assert_eq!(
            String::from_utf8(object.finish()).unwrap(),
            r#"{"plain":"/v1/chat/completions","quoted":"say \"hi\"\\\n\u0001é","absent":null,"inner":{"a":1,"c":0.5},"empty":{},"yes":true}"#
        );
        assert!(!needs_escape("é€ \u{7f}"));
    }

    #[test]
    fn addresses_are_written_as_displayed() {
        for addr in [
            "0.0.0.0:0",
            "10.200.3.45:8080",
            "255.255.255.255:65535",
            "[::1]:443",
        ] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut object = JsonObject::with_capacity(64);
            object.addr_or_null("client", Some(addr));
            assert_eq!(
                String::from_utf8(object.finish()).unwrap(),
                format!(r#"{{"client":"{addr}"}}"#)
            );
        }
    }

    #[test]
    fn an_empty_object_is_closed() {
        assert_eq!(JsonObject::with_capacity(2).finish(), b"{}");
    }
}
