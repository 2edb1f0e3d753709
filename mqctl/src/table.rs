//! Aligned plain-text tables and `key: value` blocks, the default output of every command.
//!
//! Columns are as wide as their widest cell (counted in characters), separated by two spaces,
//! with no trailing blanks. Control characters in cells are escaped (`\n`, `\u{1b}`), so a
//! message body or an error text cannot break a row or drive the terminal.

use std::fmt::Write as _;

/// How a column's cells line up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Text: flush left.
    Left,
    /// Figures: flush right, so that digits line up.
    Right,
}

/// A table with a header row.
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table of these columns, all flush left.
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        let headers: Vec<String> = headers.into_iter().map(Into::into).collect();
        let align = vec![Align::Left; headers.len()];
        Table {
            headers,
            align,
            rows: Vec::new(),
        }
    }

    /// Aligns the columns at these positions (from 0) flush right.
    pub fn right(mut self, columns: &[usize]) -> Self {
        for &c in columns {
            if let Some(a) = self.align.get_mut(c) {
                *a = Align::Right;
            }
        }
        self
    }

    /// Adds a row; missing cells are blank, extra ones are dropped.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut cells: Vec<String> = cells.into_iter().map(|c| clean(&c.into())).collect();
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// How many rows it has, the header not counted.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as lines of text, each ending in a newline.
    pub fn render(&self) -> String {
        let headers: Vec<String> = self.headers.iter().map(|h| clean(h)).collect();
        let mut widths: Vec<usize> = headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&headers).chain(&self.rows) {
            let mut line = String::new();
            let last = row.len().saturating_sub(1);
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - width(cell);
                match self.align[i] {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                    Align::Left => {
                        line.push_str(cell);
                        if i < last {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values lined up, for one record (a dead letter, a topic).
pub fn fields<K: AsRef<str>, V: AsRef<str>>(pairs: impl IntoIterator<Item = (K, V)>) -> String {
    let pairs: Vec<(String, String)> = pairs
        .into_iter()
        .map(|(k, v)| (clean(k.as_ref()), clean(v.as_ref())))
        .collect();
    let key_width = pairs.iter().map(|(k, _)| width(k)).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in pairs {
        let pad = key_width - width(&k);
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{k}:{} {v}", " ".repeat(pad));
    }
    out.lines()
        .map(str::trim_end)
        .fold(String::new(), |mut acc, l| {
            acc.push_str(l);
            acc.push('\n');
            acc
        })
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Escapes control characters, which would otherwise break the layout or reach the terminal.
fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_as_wide_as_their_widest_cell() {
        let mut t = Table::new(["TOPIC", "KIND", "MESSAGES"]).right(&[2]);
        t.row(["orders", "user", "12"]);
        t.row(["%DLQ%payments", "dead_letter", "3"]);
        assert_eq!(
            t.render(),
            "TOPIC          KIND         MESSAGES\n\
             orders         user               12\n\
             %DLQ%payments  dead_letter         3\n"
        );
    }

    #[test]
    fn the_last_left_column_is_not_padded() {
        let mut t = Table::new(["A", "NOTE"]);
        t.row(["1", "a long note"]);
        t.row(["2", "x"]);
        let out = t.render();
        assert!(out.lines().all(|l| l == l.trim_end()), "{out:?}");
        assert_eq!(out, "A  NOTE\n1  a long note\n2  x\n");
    }

    #[test]
    fn width_counts_characters_not_bytes() {
        let mut t = Table::new(["K", "V"]);
        t.row(["é€", "1"]);
        t.row(["ab", "2"]);
        assert_eq!(t.render(), "K   V\né€  1\nab  2\n");
    }

    #[test]
    fn control_characters_are_escaped() {
        let mut t = Table::new(["BODY", "N"]);
        t.row(["line1\nline2\u{1b}[31m", "1"]);
        let out = t.render();
        assert_eq!(out.lines().count(), 2, "{out:?}");
        assert!(out.contains("line1\\nline2\\u{1b}[31m"), "{out:?}");
    }

    #[test]
    fn short_rows_are_padded_and_long_rows_cut() {
        let mut t = Table::new(["A", "B"]);
        t.row(["1"]);
        t.row(["2", "3", "4"]);
        assert_eq!(t.len(), 2);
        assert_eq!(t.render(), "A  B\n1\n2  3\n");
    }

    #[test]
    fn an_empty_table_is_its_header() {
        let t = Table::new(["GROUP", "LAG"]);
        assert!(t.is_empty());
        assert_eq!(t.render(), "GROUP  LAG\n");
    }

    #[test]
    fn fields_line_up_their_values() {
        assert_eq!(
            fields([("group", "g1"), ("last_error", "boom"), ("tag", "")]),
            "group:      g1\nlast_error: boom\ntag:\n"
        );
    }
}
