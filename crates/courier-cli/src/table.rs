//! A plain text table with `|` separators (pastes into Markdown as is).

use crate::{out, Error};

/// Column alignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    /// Cells padded on the right (the default).
    Left,
    /// Cells padded on the left, and `-:` in the rule: numbers.
    Right,
}

/// A table of text cells, printed as Markdown: a header line, a rule that
/// tells the alignment, a line per row, every column as wide as its widest
/// cell. The header's titles are left-aligned.
///
/// ```
/// use courier_cli::bench::{Align, Table};
/// let mut t = Table::new(&["system", "p50 µs"]).align([1], Align::Right);
/// t.row(vec!["tcp".into(), "7.82".into()]);
/// assert_eq!(t.lines(), ["| system | p50 µs |", "|--------|-------:|", "| tcp    |   7.82 |"]);
/// ```
#[derive(Debug)]
pub struct Table {
    header: Vec<String>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles, every column left-aligned.
    pub fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            align: vec![Align::Left; header.len()],
            rows: Vec::new(),
        }
    }

    /// Sets the alignment of these columns (from 0), e.g. `2..=5`.
    #[must_use]
    pub fn align(mut self, cols: impl IntoIterator<Item = usize>, align: Align) -> Self {
        for col in cols {
            if let Some(a) = self.align.get_mut(col) {
                *a = align;
            }
        }
        self
    }

    /// Adds a row; missing cells are empty, extra cells are left out.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table's lines.
    pub fn lines(&self) -> Vec<String> {
        let mut width: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (w, c) in width.iter_mut().zip(r) {
                *w = (*w).max(c.chars().count());
            }
        }
        let render = |cells: &[String], aligns: &[Align]| {
            let mut line = String::from("|");
            for (i, w) in width.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = w.saturating_sub(cell.chars().count());
                let (left, right) = match aligns.get(i) {
                    Some(Align::Right) => (pad, 0),
                    _ => (0, pad),
                };
                line.push(' ');
                line.push_str(&" ".repeat(left));
                line.push_str(cell);
                line.push_str(&" ".repeat(right));
                line.push_str(" |");
            }
            line
        };
        let mut lines = vec![render(&self.header, &[])];
        let mut rule = String::from("|");
        for (i, w) in width.iter().enumerate() {
            let dashes = "-".repeat(*w + 1);
            if self.align[i] == Align::Right {
                rule.push_str(&dashes);
                rule.push_str(":|");
            } else {
                rule.push_str(&dashes);
                rule.push_str("-|");
            }
        }
        lines.push(rule);
        for r in &self.rows {
            lines.push(render(r, &self.align));
        }
        lines
    }

    /// Prints the table on stdout.
    pub fn print(&self) -> Result<(), Error> {
        for line in self.lines() {
            out(line)?;
        }
        Ok(())
    }
}
