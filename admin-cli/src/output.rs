//! Every way the CLI prints: aligned tables (kubectl style), JSON, YAML, and the small value
//! formatters (sizes, durations, hashes) the tables use.

use std::io::{self, Write};

use clap::ValueEnum;
use serde::Serialize;

use crate::error::{CliError, Result};

/// How a read command prints its answer (`--output`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    #[default]
    Table,
    /// One JSON document (pretty-printed).
    Json,
    /// One YAML document.
    Yaml,
}

/// A table with a header row; columns are padded to their widest cell.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// Spaces between two columns.
const COLUMN_GAP: usize = 3;

impl Table {
    /// A table with these column names (printed upper-case).
    pub fn new<S: AsRef<str>>(headers: impl IntoIterator<Item = S>) -> Self {
        Self { headers: headers.into_iter().map(|h| h.as_ref().to_uppercase()).collect(), rows: Vec::new() }
    }

    /// Adds a row; missing cells print empty, extra cells are kept (and widen the table).
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// Number of data rows.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// True with no data row.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, one line per row, each line ending in `\n`, no trailing spaces.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).chain([self.headers.len()]).max().unwrap_or(0);
        let mut widths = vec![0usize; columns];
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.headers).chain(&self.rows) {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = row.get(i).map_or("", String::as_str);
                line.push_str(cell);
                if i + 1 < columns {
                    line.extend(std::iter::repeat_n(' ', width - cell.chars().count() + COLUMN_GAP));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Bytes for JSON as `(utf8, base64)`: the text when they are UTF-8, else their base64; exactly
/// one is set.
pub fn text_or_base64(bytes: &[u8]) -> (Option<String>, Option<String>) {
    use base64::Engine;
    match std::str::from_utf8(bytes) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(base64::engine::general_purpose::STANDARD.encode(bytes))),
    }
}

/// `value` as pretty JSON (no trailing newline).
pub fn to_json<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map_err(|e| CliError::Encode { format: "json", reason: e.to_string() })
}

/// `value` as compact one-line JSON.
pub fn to_json_line<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| CliError::Encode { format: "json", reason: e.to_string() })
}

/// `value` as a YAML document.
pub fn to_yaml<T: Serialize + ?Sized>(value: &T) -> Result<String> {
    serde_yaml_ng::to_string(value).map_err(|e| CliError::Encode { format: "yaml", reason: e.to_string() })
}

/// Renders `value` as `format` asks: `table` builds the human form.
pub fn render<T: Serialize + ?Sized>(
    format: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> Result<String> {
    Ok(match format {
        OutputFormat::Table => table(value),
        OutputFormat::Json => {
            let mut s = to_json(value)?;
            s.push('\n');
            s
        }
        OutputFormat::Yaml => to_yaml(value)?,
    })
}

/// Renders and prints to stdout.
pub fn emit<T: Serialize + ?Sized>(format: OutputFormat, value: &T, table: impl FnOnce(&T) -> String) -> Result<()> {
    print_stdout(&render(format, value, table)?)
}

/// Writes `text` to stdout as is, and flushes.
pub fn print_stdout(text: &str) -> Result<()> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes()).and_then(|()| out.flush()).map_err(CliError::Output)
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `64.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Milliseconds as the largest whole unit that divides them: `7d`, `12h`, `90s`, `250ms`.
pub fn human_ms(ms: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s")];
    if ms == 0 {
        return "0ms".into();
    }
    for (size, name) in UNITS {
        if ms.is_multiple_of(size) {
            return format!("{}{name}", ms / size);
        }
    }
    format!("{ms}ms")
}

/// An optional limit: the value, or `unlimited`.
pub fn or_unlimited(value: Option<u64>, f: impl FnOnce(u64) -> String) -> String {
    value.map_or_else(|| "unlimited".to_string(), f)
}

/// A 32-byte hash as lowercase hex; `short` keeps the first 12 characters (as git does).
pub fn hex(bytes: &[u8], short: bool) -> String {
    let mut s: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if short && s.len() > 12 {
        s.truncate(12);
    }
    s
}

/// A list of ids as `1,2,3`.
pub fn id_list(ids: &[u64]) -> String {
    ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let mut t = Table::new(["name", "partitions", "rf"]);
        t.row(["orders", "12", "3"]);
        t.row(["x", "1"]);
        let text = t.render();
        assert_eq!(text, "NAME     PARTITIONS   RF\norders   12           3\nx        1\n");
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn empty_table_prints_only_the_header() {
        assert_eq!(Table::new(["a", "bb"]).render(), "A   BB\n");
    }

    #[test]
    fn json_and_yaml_render_the_same_value() {
        #[derive(Serialize)]
        struct V {
            name: &'static str,
            n: u32,
        }
        let v = V { name: "t", n: 3 };
        let j = render(OutputFormat::Json, &v, |_| unreachable!()).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&j).unwrap();
        assert_eq!(parsed["name"], "t");
        assert_eq!(parsed["n"], 3);
        let y = render(OutputFormat::Yaml, &v, |_| unreachable!()).unwrap();
        assert_eq!(y, "name: t\nn: 3\n");
        assert_eq!(render(OutputFormat::Table, &v, |v| format!("{}!", v.name)).unwrap(), "t!");
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_ms(7 * 86_400_000), "7d");
        assert_eq!(human_ms(90_000), "90s");
        assert_eq!(human_ms(1_500), "1500ms");
        assert_eq!(human_ms(0), "0ms");
        assert_eq!(or_unlimited(None, human_bytes), "unlimited");
    }

    #[test]
    fn hashes_print_short_or_full() {
        let h = [0xabu8; 32];
        assert_eq!(hex(&h, true), "abababababab");
        assert_eq!(hex(&h, false).len(), 64);
        assert_eq!(id_list(&[1, 2, 3]), "1,2,3");
    }
}
