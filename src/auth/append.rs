//! Adding an entry to a keys file's text without rewriting what the operator wrote (comments,
//! order, style), for `sluice keys add --file`.

/// Written at the top of a keys file that `sluice keys add` creates.
pub const NEW_KEYS_FILE_HEADER: &str = "\
# Sluice API keys. Only SHA-256 digests of the keys are stored here, never the keys.
# Add entries with `sluice keys add USER --file FILE`; a running Sluice reloads this file
# when it changes (within ~2 s) and on SIGHUP.
";

/// `text` with `line` (from [`super::entry_line`]) added as the last entry of `keys:`, at the
/// indentation the existing entries use. Text with no content yet gets a `keys:` line first.
/// The result should be parsed again before it is written: this is a text edit, not a YAML one.
pub fn append_entry(text: &str, line: &str) -> Result<String, String> {
    let mut out = text.to_string();
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let lines: Vec<&str> = text.lines().collect();
    let Some(keys_at) = lines.iter().position(|l| l.starts_with("keys:")) else {
        if !is_blank_yaml(text) {
            return Err("no top-level `keys:` line".into());
        }
        out.push_str("keys:\n");
        out.push_str(&format!("  {}\n", line.trim_start()));
        return Ok(out);
    };
    let after = lines[keys_at]["keys:".len()..].trim();
    if !after.is_empty() && !after.starts_with('#') {
        return Err(format!(
            "`keys:` is written in flow style (`keys: {after}`): write `keys:` alone on its \
             line with one `  - {{ … }}` line per entry below it, so entries can be appended"
        ));
    }
    // Match the existing entries: YAML allows the sequence at column 0 or indented, but not a
    // mix.
    let indent = lines[keys_at + 1..]
        .iter()
        .map(|l| (l.len() - l.trim_start().len(), l.trim_start()))
        .find(|(_, l)| !l.is_empty() && !l.starts_with('#'))
        .filter(|(_, l)| l.starts_with('-'))
        .map_or(2, |(indent, _)| indent);
    out.push_str(&" ".repeat(indent));
    out.push_str(line.trim_start());
    out.push('\n');
    Ok(out)
}

/// Nothing but blank lines, comments and document markers.
pub fn is_blank_yaml(text: &str) -> bool {
    text.lines().all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---"
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{entry_line, KeyDigest, KeyStore};

    fn append_and_parse(text: &str, key: &str, key_id: &str) -> (String, KeyStore) {
        let line = entry_line(key, "alice", key_id, None, None);
        let out = append_entry(text, &line).unwrap();
        let store = KeyStore::parse(&out, "t").unwrap_or_else(|e| panic!("{e}\n{out}"));
        assert!(store.lookup(&KeyDigest::of(key)).is_some(), "{out}");
        (out, store)
    }

    #[test]
    fn appends_to_new_and_blank_files() {
        let (out, store) = append_and_parse("", "k-a", "a");
        assert!(out.starts_with("keys:\n  - { sha256:"), "{out}");
        assert_eq!(store.len(), 1);
        let (out, _) = append_and_parse(NEW_KEYS_FILE_HEADER, "k-a", "a");
        assert!(out.starts_with(NEW_KEYS_FILE_HEADER), "{out}");
        let (out, _) = append_and_parse("keys:\n", "k-a", "a");
        let (_, store) = append_and_parse(&out, "k-b", "b");
        assert_eq!(store.len(), 2);
    }

    #[test]
    fn appends_after_a_last_line_without_newline() {
        let first = entry_line("k-a", "alice", "a", None, None);
        let (out, store) = append_and_parse(&format!("keys:\n{first}"), "k-b", "b");
        assert_eq!(store.len(), 2);
        assert!(out.ends_with("}\n") && out.lines().count() == 3, "{out}");
    }

    #[test]
    fn keeps_comments_and_matches_indentation() {
        let first = entry_line("k-a", "alice", "a", None, None);
        let text = format!(
            "# my keys\nkeys:   # all of them\n\n# alice\n{}\n# end\n",
            first.trim_start()
        );
        let (out, store) = append_and_parse(&text, "k-b", "b");
        assert_eq!(store.len(), 2);
        assert!(out.starts_with(&text), "{out}");
        assert!(
            out.lines().last().unwrap().starts_with("- { sha256:"),
            "{out}"
        );
    }

    #[test]
    fn flow_style_is_refused_with_advice() {
        let err = append_entry("keys: []\n", "  - { }").unwrap_err();
        assert!(
            err.contains("flow style") && err.contains("keys: []"),
            "{err}"
        );
    }

    #[test]
    fn a_file_without_keys_line_is_refused() {
        assert!(append_entry("other: 1\n", "  - { }").is_err());
    }
}
