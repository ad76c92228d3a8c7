//! YAML syntax errors made actionable: serde_yaml (libyaml) says what it
//! expected and where; this adds the YAML path of the place (`upstreams.
//! new-model`) and a hint in plain words (which bracket is unclosed, that
//! tabs are not indentation, that a value needs quotes). Pure text work, no
//! YAML parser: the document does not parse, so the path is found by
//! indentation, as a person reading the file would.

use super::ConfigError;

/// Fills in the path and hint of a syntax error `e`, given serde_yaml's
/// full message (`raw`, with its " at line N column M" marks) and the file.
pub(super) fn explain(mut e: ConfigError, raw: &str, text: &str) -> ConfigError {
    if !e.path.is_empty() || e.hint.is_some() {
        return e;
    }
    // libyaml's "while parsing a flow mapping at line 4 column 14": where
    // the construct that went wrong began.
    let context = raw
        .split_once(", while ")
        .and_then(|(_, c)| mark(c))
        .filter(|(line, _)| *line <= e.position.line);
    let at_line = context.map_or(e.position.line, |(l, _)| l);
    e.path = path_at(text, at_line);
    e.hint = Some(hint(raw, text, e.position.line, e.position.column, context));
    e
}

/// The first " at line N column M" in `s`.
fn mark(s: &str) -> Option<(usize, usize)> {
    let rest = &s[s.find(" at line ")? + " at line ".len()..];
    let (line, rest) = rest.split_once(" column ")?;
    let col: String = rest.chars().take_while(char::is_ascii_digit).collect();
    Some((line.parse().ok()?, col.parse().ok()?))
}

fn hint(
    raw: &str,
    text: &str,
    line: usize,
    column: usize,
    context: Option<(usize, usize)>,
) -> String {
    let at = |(l, c): (usize, usize)| format!("line {l}, column {c}");
    let char_at = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.chars().nth(column.saturating_sub(1)));
    let m = raw.to_ascii_lowercase();
    if m.contains("tab") || char_at == Some('\t') {
        return "indent with spaces: YAML does not allow tabs".into();
    }
    if m.contains("flow mapping") && m.contains("'}'") {
        return match context {
            Some(c) => format!(
                "the `{{` at {} is not closed: add the missing `}}`, or a `,` between its entries",
                at(c)
            ),
            None => "a `{` is not closed: add the missing `}`, or a `,` between its entries".into(),
        };
    }
    if m.contains("flow sequence") && m.contains("']'") {
        return match context {
            Some(c) => format!(
                "the `[` at {} is not closed: add the missing `]`, or a `,` between its items",
                at(c)
            ),
            None => "a `[` is not closed: add the missing `]`, or a `,` between its items".into(),
        };
    }
    if m.contains("quoted scalar") {
        return match context {
            Some(c) => format!("the quote at {} is never closed", at(c)),
            None => "a quote is never closed".into(),
        };
    }
    if m.contains("did not find expected node content")
        || m.contains("cannot start any plain token")
    {
        return "a value is missing, or starts with a character YAML reserves (such as - @ ` % | > * & ! ,): put it in quotes, e.g. \"-\"".into();
    }
    if m.contains("mapping values are not allowed") {
        return "a value that contains `: ` must be quoted (\"a: b\"), or this line is indented deeper than its siblings".into();
    }
    if m.contains("did not find expected key")
        || m.contains("did not find expected '-'")
        || m.contains("block mapping")
        || m.contains("block collection")
    {
        return "line this up with the other keys (or `-` items) of its block: every entry of a block must be indented by the same number of spaces".into();
    }
    if m.contains("eof while parsing") {
        return "the file is empty: a config needs at least `upstreams` and `experiments` (see config/example.yaml)".into();
    }
    "check the YAML syntax here (spaces for indentation, closed quotes and brackets); config/reference.yaml shows every field in valid YAML".into()
}

/// The YAML path (`experiments[0].variants`) of the entry written on
/// `line` (1-based), or of the block it belongs to, found by indentation.
fn path_at(text: &str, line: usize) -> String {
    // Each frame: the column it starts at and its path segment
    // (`key` or `[n]`).
    let mut stack: Vec<(usize, String)> = Vec::new();
    for raw_line in text.lines().take(line) {
        let content = raw_line.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut col = raw_line.len() - content.len();
        let mut rest = content;
        // One or more `- ` list items, each opening an index.
        while let Some(after) =
            rest.strip_prefix("- ")
                .or(if rest == "-" { Some("") } else { None })
        {
            let mut next = 0;
            while let Some((c, seg)) = stack.last() {
                if *c > col {
                    stack.pop();
                } else if *c == col && seg.starts_with('[') {
                    next = seg[1..seg.len() - 1].parse::<usize>().map_or(0, |n| n + 1);
                    stack.pop();
                } else {
                    break;
                }
            }
            stack.push((col, format!("[{next}]")));
            let trimmed = after.trim_start_matches(' ');
            col += 2 + (after.len() - trimmed.len());
            rest = trimmed;
        }
        if let Some(key) = key_of(rest) {
            while stack.last().is_some_and(|(c, _)| *c >= col) {
                stack.pop();
            }
            stack.push((col, key.to_string()));
        }
    }
    let mut path = String::new();
    for (_, seg) in stack {
        if !path.is_empty() && !seg.starts_with('[') {
            path.push('.');
        }
        path.push_str(&seg);
    }
    path
}

/// The key of a `key: value` (or `key:`) line, if it is a plain key.
fn key_of(s: &str) -> Option<&str> {
    let end = s.find(": ").or_else(|| s.strip_suffix(':').map(str::len))?;
    let key = &s[..end];
    let plain = !key.is_empty()
        && !key.contains(['{', '}', '[', ']', ',', '#', '"', '\''])
        && !key.starts_with(['-', '?', '&', '*', '!', '|', '>', '%', '@', '`']);
    plain.then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "listen: 127.0.0.1:8080\nupstreams:\n  old: { url: http://a:1 }\n  new: { url: http://b:2\nexperiments:\n  - name: a\n    routes: [/p]\n  - name: b\n    variants:\n      - { name: c }\n      - { name: d }\n";

    #[test]
    fn the_path_is_found_by_indentation() {
        assert_eq!(path_at(FILE, 1), "listen");
        assert_eq!(path_at(FILE, 4), "upstreams.new");
        assert_eq!(path_at(FILE, 7), "experiments[0].routes");
        assert_eq!(path_at(FILE, 9), "experiments[1].variants");
        assert_eq!(path_at(FILE, 11), "experiments[1].variants[1]");
    }

    #[test]
    fn marks_are_read_from_libyaml_messages() {
        let raw = "did not find expected ',' or '}' at line 5 column 12, while parsing a flow mapping at line 4 column 14";
        assert_eq!(mark(raw), Some((5, 12)));
        assert_eq!(mark(raw.split_once(", while ").unwrap().1), Some((4, 14)));
    }

    #[test]
    fn hints_name_the_unclosed_bracket_and_tabs() {
        let raw = "did not find expected ',' or '}' at line 5 column 12, while parsing a flow mapping at line 4 column 14";
        let h = hint(raw, FILE, 5, 12, Some((4, 14)));
        assert!(
            h.contains("the `{` at line 4, column 14 is not closed"),
            "{h}"
        );
        let tabbed = "a:\n\tb: 1\n";
        let h = hint(
            "found character that cannot start any plain token",
            tabbed,
            2,
            1,
            None,
        );
        assert!(h.contains("spaces"), "{h}");
    }
}
