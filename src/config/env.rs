//! `${NAME}` interpolation: the environment's value becomes the value of the YAML scalar the
//! reference is in, exactly as it is, whatever YAML it looks like (` #`, `: `, a newline, quotes,
//! a leading `*` or `{`). The raw text is never spliced: each scalar holding a reference is
//! written anew as a double-quoted YAML string with the value escaped in it (or as itself when
//! the result is a plain word or number, so that `threads: ${THREADS}` stays a number). Which
//! scalar a reference is in, and whether it is in a comment or a key, is told by libyaml's own
//! scanner, the one serde_yaml parses with, so the two cannot read the file differently. The
//! rewritten text keeps every line break where it was: errors found later name the user's lines.
//!
//! `$${` writes a literal `${`. A reference in a comment is left alone; one in a key is an error.

use super::ConfigError;
use std::env::VarError;
use std::fmt::Write as _;

/// A site's stand-in while the text is scanned is `OPEN`, the site's index in decimal, `CLOSE`:
/// Unicode noncharacters, reserved for a program's own use, which libyaml reads as ordinary
/// characters of a plain scalar. In the raw text a `{` or `}` would be flow indicators: `{url:
/// ${URL}}` could not be scanned.
const OPEN: char = '\u{FDD0}';
const CLOSE: char = '\u{FDD1}';

/// What a `$` sequence of the text means.
#[derive(Debug)]
enum Kind {
    /// `${NAME}`.
    Variable(String),
    /// `$${NAME}` or `$${`: the text without its first `$`.
    Literal(String),
    /// `${` not followed by a name and `}`: why not.
    Malformed(String),
}

#[derive(Debug)]
struct Site {
    kind: Kind,
    /// 1-based.
    line: usize,
    /// Byte range of the stand-in in the scanned text.
    marked: std::ops::Range<usize>,
    /// Byte range of the `$` sequence in the user's text.
    original: std::ops::Range<usize>,
}

/// Replaces every `${NAME}` in a scalar value with `lookup`'s value. A variable that is not set,
/// one in a key, and a `${` without a name and `}` are errors naming their line.
pub fn interpolate(
    text: &str,
    lookup: impl Fn(&str) -> Result<String, VarError>,
) -> Result<String, ConfigError> {
    let (marked, sites) = mark(text);
    if sites.is_empty() {
        return Ok(text.to_string());
    }
    // Typed into the text, they could pass for a stand-in.
    if let Some(at) = text.find([OPEN, CLOSE]) {
        return Err(ConfigError::Env(format!(
            "line {}: the Unicode noncharacters U+FDD0 and U+FDD1 cannot appear in a config",
            line_at(text, at)
        )));
    }
    let Some(scalars) = scan::scalars(&marked) else {
        return Err(syntax_error(&marked, text, &sites));
    };
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for scalar in scalars {
        let first = sites.partition_point(|s| s.marked.start < scalar.start);
        let last = sites.partition_point(|s| s.marked.start < scalar.end);
        if first == last {
            continue;
        }
        let value = resolve(&scalar, &sites, first..last, &lookup)?;
        let start = original_offset(scalar.start, &sites);
        let end = original_offset(scalar.end, &sites);
        out.push_str(&text[copied..start]);
        write_scalar(&mut out, &value, scalar.plain, &text[start..end]);
        copied = end;
    }
    out.push_str(&text[copied..]);
    Ok(out)
}

/// The text with each `$` sequence that means something replaced by its stand-in, and the sites.
fn mark(text: &str) -> (String, Vec<Site>) {
    let mut marked = String::with_capacity(text.len());
    let mut sites: Vec<Site> = Vec::new();
    let mut copied = 0;
    let mut line = 1;
    let mut i = 0;
    while let Some(found) = text[i..].find(['$', '\n']) {
        let at = i + found;
        let rest = &text[at..];
        let (kind, len) = if rest.starts_with('\n') {
            line += 1;
            i = at + 1;
            continue;
        } else if let Some(after) = rest.strip_prefix("$${") {
            match name(after) {
                Some(name) => (Kind::Literal(format!("${{{name}}}")), 3 + name.len() + 1),
                None => (Kind::Literal("${".to_string()), 3),
            }
        } else if let Some(after) = rest.strip_prefix("${") {
            match name(after) {
                Some(name) => (Kind::Variable(name.to_string()), 2 + name.len() + 1),
                None => (Kind::Malformed(malformed(after)), 2),
            }
        } else {
            i = at + 1;
            continue;
        };
        marked.push_str(&text[copied..at]);
        let start = marked.len();
        // As many characters as the original when the index fits, so that libyaml's columns
        // (in a syntax error) are the user's.
        let width = len.saturating_sub(2);
        let _ = write!(marked, "{OPEN}{:0width$}{CLOSE}", sites.len());
        sites.push(Site {
            kind,
            line,
            marked: start..marked.len(),
            original: at..at + len,
        });
        copied = at + len;
        i = copied;
    }
    marked.push_str(&text[copied..]);
    (marked, sites)
}

/// The variable name at the start of `text` when a `}` ends it.
fn name(text: &str) -> Option<&str> {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))?;
    (end > 0 && text[end..].starts_with('}')).then(|| &text[..end])
}

fn malformed(after: &str) -> String {
    let line = after.split(['\n', '\r']).next().unwrap_or_default();
    match line.split_once('}') {
        Some((name, _)) => format!(
            "invalid environment variable name {name:?} in ${{{name}}} (letters, digits and _; \
             $${{ writes a literal ${{)"
        ),
        None => "unterminated ${ (no } after it on its line; $${ writes a literal ${)".to_string(),
    }
}

/// The scalar's value with its stand-ins replaced.
fn resolve(
    scalar: &scan::Scalar,
    sites: &[Site],
    inside: std::ops::Range<usize>,
    lookup: &impl Fn(&str) -> Result<String, VarError>,
) -> Result<String, ConfigError> {
    let env_error =
        |line: usize, message: String| ConfigError::Env(format!("line {line}: {message}"));
    let mut out = String::with_capacity(scalar.value.len());
    let mut used = vec![false; inside.len()];
    let mut rest = scalar.value.as_str();
    while let Some(at) = rest.find([OPEN, CLOSE]) {
        out.push_str(&rest[..at]);
        // Only a `\uFDD0` escape in a double-quoted string can make a stand-in that is not one
        // of the sites in this scalar.
        let site = rest[at..]
            .strip_prefix(OPEN)
            .and_then(|r| r.split_once(CLOSE))
            .and_then(|(index, r)| Some((index.parse::<usize>().ok()?, r)))
            .filter(|(index, _)| {
                inside.contains(index) && !std::mem::replace(&mut used[index - inside.start], true)
            });
        let Some((index, after)) = site else {
            return Err(env_error(
                scalar.line,
                "the Unicode noncharacters U+FDD0 and U+FDD1 cannot appear in a config".into(),
            ));
        };
        let site = &sites[index];
        match &site.kind {
            Kind::Variable(name) if scalar.key => {
                return Err(env_error(
                    site.line,
                    format!(
                        "${{{name}}} is in a key: environment variables are replaced in values only"
                    ),
                ))
            }
            Kind::Variable(name) => match lookup(name) {
                Ok(value) => out.push_str(&value),
                Err(VarError::NotPresent) => {
                    return Err(env_error(
                        site.line,
                        format!(
                            "environment variable {name} is not set (referenced as ${{{name}}})"
                        ),
                    ))
                }
                Err(VarError::NotUnicode(_)) => {
                    return Err(env_error(
                        site.line,
                        format!("environment variable {name} is not valid Unicode"),
                    ))
                }
            },
            Kind::Literal(text) => out.push_str(text),
            Kind::Malformed(message) => return Err(env_error(site.line, message.clone())),
        }
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// Writes `value` in place of a scalar whose source was `span`: a plain scalar stays plain when
/// the value reads back as the same word or number; anything else is double-quoted. Then the
/// span's line breaks, and spaces as wide as its last line, so that what follows keeps its line
/// and column.
fn write_scalar(out: &mut String, value: &str, plain: bool, span: &str) {
    if plain && stays_plain(value) {
        out.push_str(value);
    } else {
        out.push('"');
        for c in value.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                ' '..='~' => out.push(c),
                c if u32::from(c) <= 0xFFFF => {
                    let _ = write!(out, "\\u{:04X}", u32::from(c));
                }
                c => {
                    let _ = write!(out, "\\U{:08X}", u32::from(c));
                }
            }
        }
        out.push('"');
    }
    let mut last_line = span;
    let mut chars = span.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        // libyaml's line breaks, so that its line numbers stay the same.
        if matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}') {
            let mut end = i + c.len_utf8();
            if c == '\r' && chars.peek().is_some_and(|&(_, next)| next == '\n') {
                chars.next();
                end += 1;
            }
            out.push_str(&span[i..end]);
            last_line = &span[end..];
        }
    }
    if last_line.len() < span.len() {
        out.extend(last_line.chars().map(|_| ' '));
    }
}

/// Whether `value`, written unquoted as a value, is read back as itself: a word or number. Not
/// `null`, which YAML reads as no value at all, nor `-`, a sequence entry.
fn stays_plain(value: &str) -> bool {
    !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-'))
        && !value.starts_with('-')
        && !matches!(value, "null" | "Null" | "NULL")
}

/// The offset in the user's text of `marked`, an offset in the scanned text outside any stand-in.
fn original_offset(marked: usize, sites: &[Site]) -> usize {
    let before = &sites[..sites.partition_point(|s| s.marked.start < marked)];
    let grown: usize = before
        .iter()
        .map(|s| s.marked.len() - s.original.len())
        .sum();
    marked - grown
}

fn line_at(text: &str, at: usize) -> usize {
    text[..at].matches('\n').count() + 1
}

/// The text cannot be scanned: serde_yaml's error for it, in the user's terms.
fn syntax_error(marked: &str, text: &str, sites: &[Site]) -> ConfigError {
    let unmark = |s: &str| {
        let mut out = s.to_string();
        for site in sites.iter().rev() {
            out = out.replace(&marked[site.marked.clone()], &text[site.original.clone()]);
        }
        out
    };
    let deserializer = serde_yaml::Deserializer::from_str(marked);
    match serde_path_to_error::deserialize::<_, serde_yaml::Value>(deserializer) {
        Err(err) => {
            let (key, message) = crate::yaml_error::describe(marked, err);
            ConfigError::Invalid {
                key: unmark(&key),
                message: unmark(&message),
            }
        }
        Ok(_) => ConfigError::Env("the config is not valid YAML".into()),
    }
}

/// libyaml's scanner: the scalar tokens of a text.
mod scan {
    use std::mem::MaybeUninit;

    pub(super) struct Scalar {
        /// Byte range in the text (a quoted scalar's quotes, a block scalar's header included).
        pub start: usize,
        pub end: usize,
        /// 1-based line of its start.
        pub line: usize,
        pub plain: bool,
        /// A mapping key (`KEY` token before it).
        pub key: bool,
        pub value: String,
    }

    struct Parser(*mut unsafe_libyaml::yaml_parser_t);

    impl Drop for Parser {
        fn drop(&mut self) {
            // SAFETY: initialised by yaml_parser_initialize, deleted once.
            unsafe { unsafe_libyaml::yaml_parser_delete(self.0) }
        }
    }

    /// Every scalar token of `text`; `None` when libyaml cannot scan it.
    pub(super) fn scalars(text: &str) -> Option<Vec<Scalar>> {
        let mut storage = MaybeUninit::<unsafe_libyaml::yaml_parser_t>::uninit();
        // The parser points at itself once given its input: it is used in place, never moved.
        let parser = Parser(storage.as_mut_ptr());
        // SAFETY: `parser.0` is valid for writes; initialize fills the whole struct.
        if unsafe { unsafe_libyaml::yaml_parser_initialize(parser.0) }.fail {
            // Nothing allocated: do not delete.
            std::mem::forget(parser);
            return None;
        }
        // SAFETY: `text` outlives `parser`, which is dropped at the end of this function.
        unsafe {
            unsafe_libyaml::yaml_parser_set_input_string(parser.0, text.as_ptr(), text.len() as u64)
        };
        let mut scalars = Vec::new();
        let mut after_key = false;
        // For each flow collection open around the token: whether it is a mapping.
        let mut flow_mappings: Vec<bool> = Vec::new();
        loop {
            let mut token = MaybeUninit::<unsafe_libyaml::yaml_token_t>::uninit();
            // SAFETY: scan writes the whole token (zeroes on failure) before anything reads it.
            let ok =
                unsafe { !unsafe_libyaml::yaml_parser_scan(parser.0, token.as_mut_ptr()).fail };
            if !ok {
                return None;
            }
            // SAFETY: written by yaml_parser_scan above.
            let token = unsafe { token.assume_init_mut() };
            let kind = token.type_;
            if kind == unsafe_libyaml::YAML_SCALAR_TOKEN {
                // SAFETY: a scalar token's data is its scalar, `length` bytes at `value`.
                let scalar = unsafe { token.data.scalar };
                let bytes = if scalar.value.is_null() {
                    &[][..]
                } else {
                    // SAFETY: see above; copied before the token is deleted.
                    unsafe { std::slice::from_raw_parts(scalar.value, scalar.length as usize) }
                };
                let value = String::from_utf8(bytes.to_vec()).ok();
                let Some(value) = value else {
                    // SAFETY: a token from yaml_parser_scan, deleted once.
                    unsafe { unsafe_libyaml::yaml_token_delete(token) };
                    return None;
                };
                scalars.push(Scalar {
                    start: token.start_mark.index as usize,
                    end: token.end_mark.index as usize,
                    line: token.start_mark.line as usize + 1,
                    plain: scalar.style == unsafe_libyaml::YAML_PLAIN_SCALAR_STYLE,
                    key: after_key,
                    value,
                });
            }
            // An anchor or a tag comes between a KEY token and its scalar. In a flow mapping an
            // entry without `:` (`{a, b: 1}`) is a key with no KEY token.
            after_key = match kind {
                unsafe_libyaml::YAML_KEY_TOKEN => true,
                unsafe_libyaml::YAML_ANCHOR_TOKEN | unsafe_libyaml::YAML_TAG_TOKEN => after_key,
                unsafe_libyaml::YAML_FLOW_MAPPING_START_TOKEN => {
                    flow_mappings.push(true);
                    true
                }
                unsafe_libyaml::YAML_FLOW_SEQUENCE_START_TOKEN => {
                    flow_mappings.push(false);
                    false
                }
                unsafe_libyaml::YAML_FLOW_MAPPING_END_TOKEN
                | unsafe_libyaml::YAML_FLOW_SEQUENCE_END_TOKEN => {
                    flow_mappings.pop();
                    false
                }
                unsafe_libyaml::YAML_FLOW_ENTRY_TOKEN => flow_mappings.last() == Some(&true),
                _ => false,
            };
            // SAFETY: a token from yaml_parser_scan, deleted once.
            unsafe { unsafe_libyaml::yaml_token_delete(token) };
            // No token: an error already reported, or the stream ended.
            if matches!(
                kind,
                unsafe_libyaml::YAML_STREAM_END_TOKEN | unsafe_libyaml::YAML_NO_TOKEN
            ) {
                return Some(scalars);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Result<String, VarError> {
        match name {
            "KEY" => Ok("sk-123".to_string()),
            _ => Err(VarError::NotPresent),
        }
    }

    fn error(text: &str) -> String {
        interpolate(text, env).unwrap_err().to_string()
    }

    #[test]
    fn replaces_variables_and_leaves_the_rest_as_it_was() {
        assert_eq!(
            interpolate("a: Bearer ${KEY}  # note\nb: $x\n", env).unwrap(),
            "a: \"Bearer sk-123\"  # note\nb: $x\n"
        );
        // A word stays a word (a number stays a number).
        assert_eq!(interpolate("a: ${KEY}\n", env).unwrap(), "a: sk-123\n");
    }

    #[test]
    fn missing_variable_names_it_and_its_line() {
        let err = error("a: 1\nb: ${NOPE}\n");
        assert!(err.contains("line 2") && err.contains("NOPE"), "{err}");
    }

    #[test]
    fn escapes_and_comments() {
        assert_eq!(interpolate("a: $${KEY}\n", env).unwrap(), "a: \"${KEY}\"\n");
        assert_eq!(interpolate("a: $${\n", env).unwrap(), "a: \"${\"\n");
        assert_eq!(interpolate("a: $$x\n", env).unwrap(), "a: $$x\n");
        for text in ["  # b: ${NOPE}\n", "a: {} # e.g. ${NOPE}\n", "# ${\n"] {
            assert_eq!(interpolate(text, env).unwrap(), text);
        }
        assert_eq!(
            interpolate("a: \"x # ${KEY}\"\n", env).unwrap(),
            "a: \"x # sk-123\"\n"
        );
    }

    #[test]
    fn a_malformed_reference_in_a_value_is_named_with_its_line() {
        let err = error("a: 1\nb: ${KEY\n");
        assert!(
            err.contains("line 2") && err.contains("unterminated"),
            "{err}"
        );
        let err = error("a: 1\n\nb: \"${A-B}\"\n");
        assert!(err.contains("line 3") && err.contains("\"A-B\""), "{err}");
    }

    #[test]
    fn every_line_stays_where_it_was() {
        let text = "a: \"x\n  ${KEY}\n\n  y\" # c\nb: |\n  ${KEY}\n  z\n\nc: 1\r\nd: ${KEY}\r\n";
        let out = interpolate(text, env).unwrap();
        assert_eq!(out.lines().count(), text.lines().count(), "{out:?}");
        assert_eq!(out.matches("\r\n").count(), 2, "{out:?}");
        // What follows a rewritten value keeps its column too.
        assert!(out.contains("\n     # c\n"), "{out:?}");
        let value: serde_yaml::Value = serde_yaml::from_str(&out).unwrap();
        assert_eq!(value["a"], "x sk-123\ny");
        assert_eq!(value["b"], "sk-123\nz\n");
        assert_eq!(value["c"], 1);
        assert_eq!(value["d"], "sk-123");
    }

    #[test]
    fn a_variable_in_any_kind_of_key_is_refused() {
        for text in [
            "a:\n  ${KEY}: 1\n",
            "a: {${KEY}: 1}\n",
            "a: {${KEY}}\n",
            "a: {b: 1, ${KEY}}\n",
            "a: [${KEY}: 1]\n",
            "a:\n  ? ${KEY}\n",
            "a:\n  &x ${KEY}: 1\n",
        ] {
            let err = error(text);
            assert!(err.contains("${KEY} is in a key"), "{text:?}: {err}");
        }
        // Values beside keys are values.
        let out = interpolate("a: {b: ${KEY}, c: [${KEY}, d]}\n", env).unwrap();
        assert_eq!(out, "a: {b: sk-123, c: [sk-123, d]}\n");
    }

    #[test]
    fn a_stand_in_cannot_be_forged() {
        // An escape naming the stand-in of the site beside it.
        let err = error("a: 1\nb: \"${KEY}\\uFDD00000\\uFDD1\"\n");
        assert!(err.contains("line 2") && err.contains("U+FDD0"), "{err}");
        let err = error("a: \u{FDD0}\nb: ${KEY}\n");
        assert!(err.contains("line 1") && err.contains("U+FDD0"), "{err}");
    }

    #[test]
    fn a_syntax_error_is_told_in_the_users_terms() {
        let err = error("a: ${KEY}\nb: ${KEY} @\nc: @x\n");
        assert!(
            err.contains("cannot start any token") && err.contains("line 3"),
            "{err}"
        );
        assert!(!err.contains(OPEN) && !err.contains(CLOSE), "{err}");
    }
}
