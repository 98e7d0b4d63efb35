//! Quoting for `sandbox-init env`: POSIX shell `export`/`unset` lines that bash, dash and
//! busybox sh read back byte-exact, dotenv lines and JSON strings. It writes into zeroized
//! buffers and never logs.

use zeroize::Zeroizing;

/// Appends `value` single-quoted: every byte stands for itself inside `'...'`, and a quote is
/// written as `'\''` (close, escaped quote, reopen). Works for any text without NUL.
pub fn push_quoted(out: &mut Zeroizing<String>, value: &str) {
    out.push('\'');
    for part in value.split_inclusive('\'') {
        match part.strip_suffix('\'') {
            Some(head) => {
                out.push_str(head);
                out.push_str("'\\''");
            }
            None => out.push_str(part),
        }
    }
    out.push('\'');
}

/// One `export NAME='value'` line. `name` must already be a valid secret (or `NAME_FILE`) name.
pub fn push_export(out: &mut Zeroizing<String>, name: &str, value: &str) {
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    out.push_str("export ");
    out.push_str(name);
    out.push('=');
    push_quoted(out, value);
    out.push('\n');
}

/// One `unset NAME` line. `name` must be a shell name (checked by the caller).
pub fn push_unset(out: &mut Zeroizing<String>, name: &str) {
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    out.push_str("unset ");
    out.push_str(name);
    out.push('\n');
}

/// One dotenv line, `NAME="value"`: double-quoted with `\\`, `\"`, `\n`, `\r` and `\t`
/// escaped, which docker compose's `env_file`, python-dotenv and node's dotenv read back (a
/// tool that expands `${VAR}` inside double quotes expands it in a value too).
pub fn push_dotenv(out: &mut Zeroizing<String>, name: &str, value: &str) {
    debug_assert!(name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
    out.push_str(name);
    out.push_str("=\"");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push_str("\"\n");
}

/// Appends `value` as a JSON string (serde_json's escaping, already in the binary).
pub fn push_json_string(out: &mut Zeroizing<String>, value: &str) {
    let mut buf = Zeroizing::new(Vec::with_capacity(value.len() + 2));
    // Writing a `str` into a Vec cannot fail, and the bytes are UTF-8.
    if serde_json::to_writer(&mut *buf, value).is_ok() {
        out.push_str(std::str::from_utf8(&buf).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::process::Command;

    fn quoted(v: &str) -> String {
        let mut out = Zeroizing::new(String::new());
        push_quoted(&mut out, v);
        out.to_string()
    }

    #[test]
    fn quoting_by_example() {
        assert_eq!(quoted(""), "''");
        assert_eq!(quoted("abc"), "'abc'");
        assert_eq!(quoted("it's"), r"'it'\''s'");
        assert_eq!(quoted("'"), r"''\'''");
        assert_eq!(quoted("''"), r"''\'''\'''");
        assert_eq!(quoted("$HOME \\n `x`"), "'$HOME \\n `x`'");
        assert_eq!(quoted("a\nb"), "'a\nb'");
        let mut out = Zeroizing::new(String::new());
        push_export(&mut out, "A_B", "x'y");
        assert_eq!(out.as_str(), "export A_B='x'\\''y'\n");
    }

    #[test]
    fn dotenv_and_json_by_example() {
        let mut out = Zeroizing::new(String::new());
        push_dotenv(&mut out, "A", "x\"y\\z\nw\t$HOME 'q'");
        assert_eq!(out.as_str(), "A=\"x\\\"y\\\\z\\nw\\t$HOME 'q'\"\n");
        let mut out = Zeroizing::new(String::new());
        push_unset(&mut out, "OLD");
        assert_eq!(out.as_str(), "unset OLD\n");
    }

    proptest! {
        #[test]
        fn json_strings_read_back_exactly(v in "\\PC*|[\\x00-\\x1f\"\\\\]*") {
            let mut out = Zeroizing::new(String::new());
            push_json_string(&mut out, &v);
            let back: String = serde_json::from_str(&out).unwrap();
            prop_assert_eq!(back, v);
        }
    }

    /// Evaluates the export lines in `shell` and prints each variable back with a separator
    /// that cannot occur in the values (NUL is never in a value).
    fn round_trip(shell: &[&str], vars: &[(String, String)]) -> Vec<u8> {
        let mut script = Zeroizing::new(String::new());
        for (name, value) in vars {
            push_export(&mut script, name, value);
        }
        let mut printer = String::from("eval \"$SCRIPT\"\n");
        for (name, _) in vars {
            printer.push_str(&format!("printf '%s\\000' \"${name}\"\n"));
        }
        let out = Command::new(shell[0])
            .args(&shell[1..])
            .arg(&printer)
            .env_clear()
            .env("SCRIPT", script.as_str())
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell:?}: {out:?}");
        out.stdout
    }

    fn expected(vars: &[(String, String)]) -> Vec<u8> {
        let mut want = Vec::new();
        for (_, v) in vars {
            want.extend_from_slice(v.as_bytes());
            want.push(0);
        }
        want
    }

    fn shells() -> Vec<Vec<&'static str>> {
        let mut shells = vec![vec!["bash", "-c"], vec!["sh", "-c"]];
        if Command::new("busybox").arg("true").output().is_ok() {
            shells.push(vec!["busybox", "sh", "-c"]);
        } else {
            eprintln!("skipped: busybox sh (busybox not installed)");
        }
        shells
    }

    #[test]
    fn tricky_values_survive_bash_dash_and_busybox() {
        let vars: Vec<(String, String)> = [
            "",
            "plain",
            "multi\nline\n\n",
            "\n",
            "'",
            "it's a \"quote\" party '''",
            "$HOME ${PATH} $(id) `id` $((1+1)) !!",
            "back\\slash\\\\ \\n \\' \\",
            "tabs\tand\r\ncrlf",
            "unicode: é ✓ 🦀 \u{202e}rtl",
            "\u{1b}[31mescape\u{7f}\u{1}",
            "trailing newlines\n\n\n",
            " leading and trailing spaces ",
            "*?[a-z] ~ # ; & | < > ( ) { }",
        ]
        .iter()
        .enumerate()
        .map(|(i, v)| (format!("V{i}"), v.to_string()))
        .collect();
        for shell in shells() {
            assert_eq!(round_trip(&shell, &vars), expected(&vars), "{shell:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_text_survives_bash_and_sh(
            values in proptest::collection::vec("[^\u{0}]{0,40}", 1..4)
        ) {
            let vars: Vec<(String, String)> = values
                .into_iter()
                .enumerate()
                .map(|(i, v)| (format!("P{i}"), v))
                .collect();
            for shell in [vec!["bash", "-c"], vec!["sh", "-c"]] {
                prop_assert_eq!(round_trip(&shell, &vars), expected(&vars));
            }
        }

        #[test]
        fn control_and_quote_heavy_text_survives(
            value in "[\u{1}-\u{1f}'\"\\\\$`!\u{7f}a]{0,60}"
        ) {
            let vars = vec![("Q".to_string(), value)];
            for shell in [vec!["bash", "-c"], vec!["sh", "-c"]] {
                prop_assert_eq!(round_trip(&shell, &vars), expected(&vars));
            }
        }
    }
}
