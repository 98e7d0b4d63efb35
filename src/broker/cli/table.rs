//! How the admin commands show things to a person: aligned tables and UTC times (RFC 3339,
//! formatted by the `time` crate). Pure: renders strings, prints nothing itself.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Seconds since the epoch as RFC 3339 UTC (`2025-11-25T12:42:05Z`); out of range is shown as
/// the number of seconds.
pub fn utc(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| format!("{secs}s after the epoch"))
}

/// A table: the header, then one line per row, columns padded to their widest cell and two
/// spaces apart, the last column unpadded, no trailing blanks.
pub fn render<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &[&str]| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
            if i + 1 == N {
                text.push_str(cell);
            } else {
                text.push_str(&format!("{cell:<w$}  "));
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&header);
    for row in rows {
        line(&row.each_ref().map(String::as_str));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_764_074_525), "2025-11-25T12:42:05Z");
        assert_eq!(utc(-1), "1969-12-31T23:59:59Z");
        assert!(utc(i64::MAX).contains("after the epoch"));
    }

    #[test]
    fn tables_align_and_trim() {
        let t = render(
            ["NAME", "SCOPE"],
            &[
                ["A".into(), "user:mona".into()],
                ["LONGER_NAME".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "NAME         SCOPE\nA            user:mona\nLONGER_NAME\n"
        );
    }
}
