//! Turns a serde_yaml error into the key path and a message ending with the line: how the config
//! and the keys file name what is wrong, and where.

/// Returns the key path (`keys[2].sha256`, or `(top level)`) and the message.
pub(crate) fn describe(
    text: &str,
    err: serde_path_to_error::Error<serde_yaml::Error>,
) -> (String, String) {
    let key = err.path().to_string();
    let inner = err.into_inner();
    let mut message = inner.to_string();
    if let Some(location) = inner.location() {
        let suffix = format!(" at line {} column {}", location.line(), location.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_string();
        }
    }
    // serde_yaml prefixes its own (shorter) path; the full one is in `key`.
    if let Some((prefix, rest)) = message.split_once(": ") {
        if key.starts_with(prefix) {
            message = rest.to_string();
        }
    }
    let unknown_field = message
        .strip_prefix("unknown field `")
        .and_then(|r| r.split('`').next())
        .map(str::to_string);
    // A key given twice: serde_yaml names the mapping and the key; the line is the second one's.
    let duplicate = message
        .strip_prefix("duplicate entry with key \"")
        .and_then(|r| r.strip_suffix('"'))
        .map(str::to_string);
    if let (Some(dup), Some(location)) = (&duplicate, inner.location()) {
        let first = key_line(text, location.line(), dup);
        let second = first.and_then(|first| key_line(text, first + 1, dup));
        let path = match key.as_str() {
            "." => dup.clone(),
            path => format!("{path}.{dup}"),
        };
        let message = match second.or(first) {
            Some(line) => format!("{dup:?} is given twice in one mapping (line {line})"),
            None => format!("{dup:?} is given twice in one mapping"),
        };
        return (path, message);
    }
    let last_key = unknown_field.clone().or_else(|| {
        key.rsplit('.')
            .next()
            .map(|k| k.split('[').next().unwrap_or(k).to_string())
    });
    // serde_yaml places errors raised inside a value at the start of the enclosing mapping, so
    // the line of the key itself is looked up from there.
    let line = inner.location().map(|location| {
        last_key
            .as_deref()
            .and_then(|k| key_line(text, location.line(), k))
            .unwrap_or(location.line())
    });
    let key = match (key.as_str(), unknown_field) {
        (".", Some(field)) => field,
        (".", None) => "(top level)".to_string(),
        // serde_path_to_error has no path for a syntax error.
        ("?", _) => "(YAML syntax)".to_string(),
        (path, _) => path.to_string(),
    };
    let message = match line {
        Some(line) => format!("{message} (line {line})"),
        None => message,
    };
    (key, message)
}

/// The line (1-based) where a key path (`routes[1].upstream`, `server.threads`) is written, as
/// far as it can be followed in block style: each key after the last line found, each `[i]`
/// the i-th `- ` item after it (a flow-style sequence, `[...]` on one line, stays on that line).
/// `None` when not even the first key is found.
pub(crate) fn path_line(text: &str, path: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut at: Option<usize> = None;
    for segment in path.split('.') {
        let (name, indices) = match segment.find('[') {
            Some(i) => (&segment[..i], &segment[i..]),
            None => (segment, ""),
        };
        if !name.is_empty() {
            let found = key_line(text, at.map_or(1, |line| line + 1), name);
            match found {
                Some(line) => at = Some(line),
                None => return at,
            }
        }
        for index in indices
            .split(['[', ']'])
            .filter_map(|i| i.parse::<usize>().ok())
        {
            let line = at?;
            let here = lines.get(line - 1).copied().unwrap_or_default();
            if here.contains('[') {
                // A flow-style sequence: its items are on this line.
                return at;
            }
            // The sequence's items are the `- ` lines at its first item's indentation.
            let indent = |l: &str| l.len() - l.trim_start().len();
            let item = |l: &str| l.trim_start().starts_with("- ") || l.trim() == "-";
            let Some(first) = lines.iter().skip(line).find(|l| item(l)) else {
                return at;
            };
            let depth = indent(first);
            let items = lines
                .iter()
                .enumerate()
                .skip(line)
                .filter(|(_, l)| item(l) && indent(l) == depth);
            match items.clone().nth(index) {
                Some((i, _)) => at = Some(i + 1),
                None => return at,
            }
        }
    }
    at
}

/// The first line at or after `from` (1-based) where `key` is written as a mapping key (plain
/// or quoted; not in a comment).
fn key_line(text: &str, from: usize, key: &str) -> Option<usize> {
    let patterns = [
        format!("{key}:"),
        format!("\"{key}\":"),
        format!("'{key}':"),
    ];
    text.lines()
        .enumerate()
        .skip(from.saturating_sub(1))
        .find(|(_, line)| {
            let line = line.trim_start().trim_start_matches("- ").trim_start();
            // A comment that mentions the key is not where it is written.
            let line = match line.find('#') {
                Some(0) => return false,
                Some(at) if line[..at].ends_with(char::is_whitespace) => &line[..at],
                _ => line,
            };
            patterns.iter().any(|pattern| {
                line.starts_with(pattern.as_str())
                    || line.contains(&format!("{{{pattern}"))
                    || line.contains(&format!(" {pattern}"))
            })
        })
        .map(|(i, _)| i + 1)
}
