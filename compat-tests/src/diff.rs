//! Human-readable output for failed comparisons: byte strings shown as text, long values abbreviated,
//! and a line diff of two renderings.

use std::sync::OnceLock;

use regex::Regex;

/// Longest byte string shown in full; longer ones show a prefix and their length.
const MAX_SHOWN_BYTES: usize = 48;

fn escape_bytes(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(MAX_SHOWN_BYTES)];
    let mut out = String::from("b\"");
    for &b in shown {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out.push('"');
    if bytes.len() > shown.len() {
        out.push_str(&format!("…({} bytes)", bytes.len()));
    }
    out
}

/// Pretty `Debug` output prints a `Vec<u8>` one number per line; turn each such list into `b"…"`.
/// (The KV messages have no other integer lists, so every such list is a bytes field.)
pub fn render(pretty_debug: &str) -> String {
    static BYTE_LIST: OnceLock<Option<Regex>> = OnceLock::new();
    static ABBREV: OnceLock<Option<Regex>> = OnceLock::new();
    let byte_list = BYTE_LIST.get_or_init(|| Regex::new(r"\[\s*(?:\d{1,3},\s*)+\]").ok()).as_ref();
    let abbrev = ABBREV.get_or_init(|| Regex::new(r#"b"((?:[^"\\]|\\.){200,})""#).ok()).as_ref();
    let mut text = pretty_debug.to_string();
    if let Some(re) = byte_list {
        text = re
            .replace_all(&text, |caps: &regex::Captures<'_>| {
                let parsed: Option<Vec<u8>> = caps[0]
                    .split(|c: char| !c.is_ascii_digit())
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse::<u8>().ok())
                    .collect();
                match parsed {
                    Some(bytes) => escape_bytes(&bytes),
                    None => caps[0].to_string(),
                }
            })
            .into_owned();
    }
    // `bytes::Bytes` already prints as b"…"; only its length needs abbreviating.
    if let Some(re) = abbrev {
        text = re
            .replace_all(&text, |caps: &regex::Captures<'_>| {
                let inner = &caps[1];
                let cut: String = inner.chars().take(MAX_SHOWN_BYTES).collect();
                format!("b\"{cut}\"…({} chars escaped)", inner.len())
            })
            .into_owned();
    }
    text
}

/// Collapses a multi-line rendering into one line.
pub fn one_line(text: &str) -> String {
    let joined: Vec<&str> = text.lines().map(str::trim).collect();
    joined.join(" ")
}

/// Cuts a line to `max` characters.
pub fn truncate(line: &str, max: usize) -> String {
    if line.chars().count() > max {
        let cut: String = line.chars().take(max).collect();
        format!("{cut} …")
    } else {
        line.to_string()
    }
}

/// One-line summary of a request: default-valued fields (0, false, empty, None) are left out.
pub fn summary(text: &str) -> String {
    static DEFAULTS: OnceLock<Option<Regex>> = OnceLock::new();
    let line = one_line(text);
    match DEFAULTS.get_or_init(|| Regex::new(r#"\b[a-z_]+: (?:0|false|\[\]|None|b""),\s?"#).ok()).as_ref() {
        Some(re) => truncate(&re.replace_all(&line, ""), 300),
        None => truncate(&line, 300),
    }
}

pub fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|l| format!("{prefix}{l}")).collect::<Vec<_>>().join("\n")
}

/// Line diff (longest common subsequence): `  ` common, `- ` only in `left`, `+ ` only in `right`.
pub fn line_diff(left: &str, right: &str) -> String {
    let a: Vec<&str> = left.lines().collect();
    let b: Vec<&str> = right.lines().collect();
    // Quadratic table; renderings here are at most a few thousand lines.
    if a.len().saturating_mul(b.len()) > 25_000_000 {
        return format!("{}\n{}\n", indent(left, "- "), indent(right, "+ "));
    }
    let (n, m) = (a.len(), b.len());
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut out = String::new();
    let (mut i, mut j) = (0, 0);
    while i < n || j < m {
        if i < n && j < m && a[i] == b[j] {
            out.push_str(&format!("  {}\n", a[i]));
            i += 1;
            j += 1;
        } else if i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1]) {
            out.push_str(&format!("- {}\n", a[i]));
            i += 1;
        } else {
            out.push_str(&format!("+ {}\n", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_lists_render_as_strings() {
        let debug = format!("{:#?}", vec![b"fo\"o\xff".to_vec()]);
        assert_eq!(render(&debug), "[\n    b\"fo\\\"o\\xff\",\n]");
    }

    #[test]
    fn long_byte_strings_are_abbreviated() {
        let debug = format!("{:#?}", vec![vec![b'x'; 100]]);
        let shown = render(&debug);
        assert!(shown.contains("…(100 bytes)"), "{shown}");
    }

    #[test]
    fn summaries_drop_default_fields() {
        let text = "Put(\n    PutRequest {\n        key: b\"k\",\n        lease: 0,\n        prev_kv: true,\n        ignore_value: false,\n    },\n)";
        assert_eq!(summary(text), "Put( PutRequest { key: b\"k\", prev_kv: true, }, )");
    }

    #[test]
    fn diff_marks_changed_lines() {
        let d = line_diff("a\nb\nc", "a\nx\nc");
        assert_eq!(d, "  a\n- b\n+ x\n  c\n");
    }
}
