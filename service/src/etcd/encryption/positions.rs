//! Where things are in the YAML, and what they are: the line of a node or
//! a key, positioned load errors, how an unquoted scalar resolves (YAML
//! 1.1, as the API server reads it), and the `# rekey.io/created-at:`
//! comment next to a key.

use chrono::{DateTime, NaiveDate, Utc};
use marked_yaml::{
    Node,
    types::{MarkedMappingNode, MarkedScalarNode},
};

use super::model::{CREATED_AT_ANNOTATION, ValidationError};

pub(super) fn load_error(e: &marked_yaml::LoadError) -> ValidationError {
    use marked_yaml::LoadError as L;
    let (marker, message) = match e {
        L::TopLevelMustBeMapping(m) => (Some(*m), "the document must be a mapping".to_string()),
        L::TopLevelMustBeSequence(m) => (Some(*m), "the document must be a sequence".to_string()),
        L::UnexpectedAnchor(m) => (
            Some(*m),
            "YAML anchors and aliases are not supported here".to_string(),
        ),
        L::MappingKeyMustBeScalar(m) => (Some(*m), "mapping keys must be scalars".to_string()),
        L::UnexpectedTag(m) => (Some(*m), "YAML tags are not supported here".to_string()),
        L::ScanError(m, err) => (Some(*m), format!("YAML syntax error: {}", err.info())),
        L::DuplicateKey(d) => (
            d.key.span().start().copied(),
            format!(
                "duplicate field `{}` (first on line {})",
                d.key.as_str(),
                d.prev_key.span().start().map(|m| m.line()).unwrap_or(0)
            ),
        ),
    };
    ValidationError {
        path: "(syntax)".into(),
        message,
        line: marker.map(|m| m.line()),
    }
}

pub(super) fn line_of(node: &Node) -> Option<usize> {
    node.span().start().map(|m| m.line())
}

/// Line of a mapping's key (where a null or empty value was written).
pub(super) fn key_line(map: &MarkedMappingNode, field: &str) -> Option<usize> {
    map.keys()
        .find(|k| k.as_str() == field)
        .and_then(scalar_line)
}

pub(super) fn scalar_line(node: &MarkedScalarNode) -> Option<usize> {
    node.span().start().map(|m| m.line())
}

/// What a plain (unquoted) YAML scalar resolves to.
pub(super) fn plain_type(s: &str) -> &'static str {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => "null",
        "true" | "True" | "TRUE" | "false" | "False" | "FALSE" | "yes" | "Yes" | "YES" | "no"
        | "No" | "NO" | "on" | "On" | "ON" | "off" | "Off" | "OFF" | "y" | "Y" | "n" | "N" => {
            "bool"
        }
        _ if s.parse::<i64>().is_ok()
            || (s.starts_with("0x") && i64::from_str_radix(&s[2..], 16).is_ok()) =>
        {
            "number"
        }
        _ if s.parse::<f64>().is_ok()
            && s.bytes().any(|b| b.is_ascii_digit())
            && !s.contains(char::is_alphabetic) =>
        {
            "number"
        }
        ".inf" | "-.inf" | ".Inf" | "-.Inf" | ".nan" | ".NaN" => "number",
        _ => "string",
    }
}

pub(super) fn is_null(node: &Node) -> bool {
    matches!(node, Node::Scalar(s) if s.may_coerce() && plain_type(s.as_str()) == "null")
}

pub(super) fn node_type(node: &Node) -> &'static str {
    match node {
        Node::Scalar(s) if s.may_coerce() => plain_type(s.as_str()),
        Node::Scalar(_) => "string",
        Node::Mapping(_) => "object",
        Node::Sequence(_) => "array",
    }
}

/// A `# rekey.io/created-at: <RFC 3339 time or date>` comment on the key
/// entry's line or on the comment lines directly above it.
pub(super) fn created_at_near(text: &str, line: Option<usize>) -> Option<DateTime<Utc>> {
    let line = line?.checked_sub(1)? + 1;
    let lines = yaml_lines(text);
    let mut candidates: Vec<&str> = Vec::new();
    if let Some(l) = lines.get(line - 1) {
        candidates.push(l);
    }
    if let Some(l) = lines.get(line) {
        // `secret:` or `name:` right below a `- name:` line
        if !l.trim_start().starts_with('-') {
            candidates.push(l);
        }
    }
    for l in lines[..(line - 1).min(lines.len())].iter().rev() {
        if l.trim_start().starts_with('#') {
            candidates.push(l);
        } else {
            break;
        }
    }
    candidates.into_iter().find_map(|l| {
        let (_, comment) = l.split_once('#')?;
        let value = comment.trim().strip_prefix(CREATED_AT_ANNOTATION)?;
        let value = value.trim_start().strip_prefix(':')?.trim();
        parse_time(value)
    })
}

/// The lines of `text` as the YAML parser numbers them: `\r\n`, `\r` and
/// `\n` each end a line (`str::lines` does not split on a lone `\r`).
pub(super) fn yaml_lines(text: &str) -> Vec<&str> {
    let mut lines = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['\r', '\n']) {
        lines.push(&rest[..i]);
        let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    if !rest.is_empty() {
        lines.push(rest);
    }
    lines
}

pub(super) fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_counts_lines_like_yaml() {
        // Found by the encryption_config fuzz target: a lone `\r` is a line
        // break for YAML but not for `str::lines`, and line numbers ran past
        // the end of the text.
        let text = "a:\r\r\r# rekey.io/created-at: 2026-01-02\r- name: k1\r";
        assert_eq!(
            created_at_near(text, Some(5)),
            parse_time("2026-01-02"),
            "the comment above line 5"
        );
        assert_eq!(created_at_near(text, Some(60)), None);
        assert_eq!(created_at_near(text, Some(0)), None);
        assert_eq!(yaml_lines("a\r\nb\rc\nd"), ["a", "b", "c", "d"]);
    }
}
