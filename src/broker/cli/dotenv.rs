//! Reads a dotenv file for `sandbox-secrets set --env-file`: `NAME=value` lines, `export`
//! prefixes, comments, single quotes (literal), double quotes (`\\ \" \n \r \t \$` escapes),
//! both spanning lines. Pure: text in, entries or the first refusal out, naming its line and
//! never the value. Names are checked by the caller (the secret-name rules live in `protocol`).

use zeroize::Zeroizing;

/// One `NAME=value` of the file.
pub struct Entry {
    /// The line the entry starts on (1-based).
    pub line: usize,
    pub name: String,
    pub value: Zeroizing<String>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Entry {{ line: {}, name: {:?} }}", self.line, self.name)
    }
}

/// Why a dotenv file was refused, with its line (1-based).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ParseError {
    pub line: usize,
    pub why: String,
}

fn refuse(line: usize, why: impl Into<String>) -> ParseError {
    ParseError {
        line,
        why: why.into(),
    }
}

/// Parses `text`. A name given twice is refused (which value was meant is not clear).
pub fn parse(text: &str) -> Result<Vec<Entry>, ParseError> {
    let mut out: Vec<Entry> = Vec::new();
    // The text holds values: its copies are zeroized on drop, and each value's buffer is sized
    // once so no reallocation leaves a copy behind.
    let chars: Zeroizing<Vec<char>> = Zeroizing::new(text.chars().collect());
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        // One logical entry (or blank line, or comment) starts here.
        let start = line;
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if i >= chars.len() {
            break;
        }
        match chars[i] {
            '\n' => {
                i += 1;
                line += 1;
                continue;
            }
            '\r' if chars.get(i + 1) == Some(&'\n') => {
                i += 2;
                line += 1;
                continue;
            }
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
                continue;
            }
            _ => {}
        }
        // Name, with an optional `export ` before it.
        let mut name = read_word(&chars, &mut i);
        if name == "export" && i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
                i += 1;
            }
            name = read_word(&chars, &mut i);
        }
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        if name.is_empty() {
            return Err(refuse(
                start,
                "expected NAME=value (a name of letters, digits and _)",
            ));
        }
        if chars.get(i) != Some(&'=') {
            return Err(refuse(
                start,
                format!("{name} has no '=' (expected {name}=value)"),
            ));
        }
        i += 1;
        while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
            i += 1;
        }
        let mut value = Zeroizing::new(String::with_capacity(text.len()));
        match chars.get(i) {
            Some(&q @ ('\'' | '"')) => {
                i += 1;
                let mut closed = false;
                while i < chars.len() {
                    let c = chars[i];
                    i += 1;
                    if c == q {
                        closed = true;
                        break;
                    }
                    if c == '\n' {
                        line += 1;
                    }
                    if q == '"' && c == '\\' {
                        let Some(&e) = chars.get(i) else { break };
                        i += 1;
                        match e {
                            'n' => value.push('\n'),
                            'r' => value.push('\r'),
                            't' => value.push('\t'),
                            '\\' | '"' | '$' | '\'' => value.push(e),
                            '\n' => line += 1, // a line continuation
                            other => {
                                value.push('\\');
                                value.push(other);
                            }
                        }
                        continue;
                    }
                    value.push(c);
                }
                if !closed {
                    return Err(refuse(
                        start,
                        format!("the {} quote of {name} is never closed", quote_word(q)),
                    ));
                }
                // After the closing quote: blanks, then a comment or the end of the line.
                while i < chars.len() && (chars[i] == ' ' || chars[i] == '\t') {
                    i += 1;
                }
                match chars.get(i) {
                    None | Some('\n') | Some('#') => {}
                    Some('\r') if chars.get(i + 1) == Some(&'\n') => {}
                    Some(_) => {
                        return Err(refuse(
                            line,
                            format!("text after the closing quote of {name}"),
                        ))
                    }
                }
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            _ => {
                // Unquoted: to the end of the line or a ` #` comment, trailing blanks dropped.
                while i < chars.len() && chars[i] != '\n' {
                    let c = chars[i];
                    if c == '#' && value.ends_with([' ', '\t']) {
                        while i < chars.len() && chars[i] != '\n' {
                            i += 1;
                        }
                        break;
                    }
                    value.push(c);
                    i += 1;
                }
                let trimmed = value.trim_end_matches([' ', '\t', '\r']).len();
                value.truncate(trimmed);
            }
        }
        if let Some(first) = out.iter().find(|e| e.name.eq_ignore_ascii_case(&name)) {
            return Err(refuse(
                start,
                format!("{name} is already set on line {}", first.line),
            ));
        }
        out.push(Entry {
            line: start,
            name,
            value,
        });
    }
    Ok(out)
}

fn quote_word(q: char) -> &'static str {
    if q == '"' {
        "double"
    } else {
        "single"
    }
}

fn read_word(chars: &[char], i: &mut usize) -> String {
    let mut w = String::new();
    while *i < chars.len() && (chars[*i].is_ascii_alphanumeric() || chars[*i] == '_') {
        w.push(chars[*i]);
        *i += 1;
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(text: &str) -> Vec<(usize, String, String)> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|e| (e.line, e.name, e.value.to_string()))
            .collect()
    }

    #[test]
    fn the_common_shapes_parse() {
        let text = "# comment\n\
                    A=plain\n\
                    export B=exported\n\
                    C = spaced   \n\
                    D='single $HOME \\n'\n\
                    E=\"double \\\"q\\\" \\n \\t \\\\ \\$\"\n\
                    F=\"multi\nline\"\n\
                    G='also\nmulti' # trailing comment\n\
                    H=value # comment\n\
                    I=a#b\n\
                    \n\
                    J=\"x\" \r\n\
                    K=crlf\r\n";
        assert_eq!(
            pairs(text),
            [
                (2, "A".into(), "plain".into()),
                (3, "B".into(), "exported".into()),
                (4, "C".into(), "spaced".into()),
                (5, "D".into(), "single $HOME \\n".into()),
                (6, "E".into(), "double \"q\" \n \t \\ $".into()),
                (7, "F".into(), "multi\nline".into()),
                (9, "G".into(), "also\nmulti".into()),
                (11, "H".into(), "value".into()),
                (12, "I".into(), "a#b".into()),
                (14, "J".into(), "x".into()),
                (15, "K".into(), "crlf".into()),
            ]
        );
    }

    #[test]
    fn refusals_name_their_line_and_never_the_value() {
        for (text, line, words) in [
            ("A=1\nnot a line\n", 2, "no '='"),
            (
                "A=1\nB='open\nsecretvalue\n",
                2,
                "single quote of B is never closed",
            ),
            ("A=\"x\" secretvalue\n", 1, "after the closing quote of A"),
            ("A=1\n\nA=secretvalue\n", 3, "already set on line 1"),
            ("=secretvalue\n", 1, "expected NAME=value"),
            ("A-B=secretvalue\n", 1, "A has no '='"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.line, line, "{text:?}: {e}");
            assert!(e.to_string().contains(words), "{text:?}: {e}");
            assert!(!e.to_string().contains("secretvalue"), "{e}");
        }
    }

    #[test]
    fn an_empty_file_has_no_entries() {
        assert!(parse("").unwrap().is_empty());
        assert!(parse("# only\n\n   \n").unwrap().is_empty());
    }
}
