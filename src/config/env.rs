//! `${NAME}` interpolation of the raw config text, before YAML parsing, so that line numbers in
//! later parse errors still point at the user's file. `$${` writes a literal `${`. Comments are
//! left alone so that a commented-out key (or an example in a comment) never demands its
//! variable.

/// Replaces every `${NAME}` with the value `lookup` gives; a missing variable is an error that
/// names it and its line.
pub fn interpolate(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let (code, comment) = line.split_at(comment_start(line));
        let mut rest = code;
        while let Some(start) = rest.find('$') {
            out.push_str(&rest[..start]);
            let after = &rest[start..];
            if let Some(literal) = after.strip_prefix("$${") {
                out.push_str("${");
                rest = literal;
            } else if let Some(open) = after.strip_prefix("${") {
                let end = open.find('}').ok_or_else(|| {
                    format!(
                        "line {}: unterminated ${{ in {:?}",
                        index + 1,
                        line.trim_end()
                    )
                })?;
                let name = &open[..end];
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "line {}: invalid environment variable name {name:?}",
                        index + 1
                    ));
                }
                let value = lookup(name).ok_or_else(|| {
                    format!(
                        "line {}: environment variable {name} is not set (referenced as ${{{name}}})",
                        index + 1
                    )
                })?;
                out.push_str(&value);
                rest = &open[end + 1..];
            } else {
                out.push('$');
                rest = &after[1..];
            }
        }
        out.push_str(rest);
        out.push_str(comment);
    }
    Ok(out)
}

/// Where a YAML comment starts on this line: a `#` at the start or after whitespace, outside
/// quotes; the line's length when there is none.
fn comment_start(line: &str) -> usize {
    let (mut single, mut double) = (false, false);
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match c {
            '\'' if !double => single = !single,
            '"' if !single && previous != '\\' => double = !double,
            '#' if !single && !double && previous.is_whitespace() => return i,
            _ => {}
        }
        previous = c;
    }
    line.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "KEY").then(|| "sk-123".to_string())
    }

    #[test]
    fn replaces_variables() {
        assert_eq!(
            interpolate("a: Bearer ${KEY}\nb: $x\n", env).unwrap(),
            "a: Bearer sk-123\nb: $x\n"
        );
    }

    #[test]
    fn missing_variable_names_it_and_its_line() {
        let err = interpolate("a: 1\nb: ${NOPE}\n", env).unwrap_err();
        assert!(err.contains("line 2") && err.contains("NOPE"), "{err}");
    }

    #[test]
    fn escapes_and_comments() {
        assert_eq!(interpolate("a: $${KEY}\n", env).unwrap(), "a: ${KEY}\n");
        assert_eq!(
            interpolate("  # b: ${NOPE}\n", env).unwrap(),
            "  # b: ${NOPE}\n"
        );
        assert_eq!(
            interpolate("a: {} # e.g. ${NOPE}\n", env).unwrap(),
            "a: {} # e.g. ${NOPE}\n"
        );
        assert_eq!(
            interpolate("a: \"x # ${KEY}\"\n", env).unwrap(),
            "a: \"x # sk-123\"\n"
        );
    }
}
