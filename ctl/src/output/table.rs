//! The `table` format: ASCII tables drawn as etcdctl's table library
//! (olekukonko/tablewriter at the version etcdctl 3.4 vendors) draws them:
//! upper-case centred headers, right-aligned cells, columns at most 30
//! wide unless one word is longer, and longer cells wrapped at spaces with
//! that library's minimum-raggedness rule. `get -w table` (KEY / VALUE /
//! REVISION) is keelctl's own addition; etcdctl has no table for `get`.

use keel_api::etcdserverpb::{MemberListResponse, RangeResponse};

use super::{
    member_rows, status_rows, EndpointHealth, EndpointStatus, HEALTH_HEADER, MEMBER_HEADER, STATUS_HEADER,
};
use crate::gofmt::hex_escaped;

const MAX_COLUMN_WIDTH: usize = 30;
const TOO_LONG_PENALTY: i64 = 100_000;

/// Display width; one column per character (wide East Asian characters,
/// which the Go library counts as two, are counted as one).
fn width(text: &str) -> usize {
    text.chars().count()
}

struct Table {
    headers: Vec<String>,
    widths: Vec<usize>,
    /// Per row, per column, the cell's lines.
    rows: Vec<Vec<Vec<String>>>,
}

impl Table {
    fn new(headers: &[&str]) -> Table {
        let widths = headers.iter().map(|h| width(h).min(MAX_COLUMN_WIDTH)).collect();
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            widths,
            rows: Vec::new(),
        }
    }

    fn append(&mut self, row: Vec<String>) {
        let mut cells = Vec::new();
        for (column, cell) in row.iter().enumerate() {
            if column >= self.widths.len() {
                self.widths.push(0);
            }
            let capped = width(cell).min(MAX_COLUMN_WIDTH);
            self.widths[column] = self.widths[column].max(capped);
            let lines = wrap_string(cell, self.widths[column]);
            let widest = lines.iter().map(|l| width(l)).max().unwrap_or(0);
            self.widths[column] = self.widths[column].max(widest);
            cells.push(lines);
        }
        self.rows.push(cells);
    }

    fn render(&self, out: &mut Vec<u8>) {
        let mut text = String::new();
        self.rule(&mut text);
        text.push('|');
        for (column, header) in self.headers.iter().enumerate() {
            text.push(' ');
            text.push_str(&pad_center(&title(header), self.widths[column]));
            text.push_str(" |");
        }
        text.push('\n');
        self.rule(&mut text);
        for row in &self.rows {
            let height = row.iter().map(Vec::len).max().unwrap_or(0);
            for line in 0..height {
                text.push('|');
                for (column, cell) in row.iter().enumerate() {
                    let content = cell.get(line).map_or("  ", String::as_str);
                    text.push(' ');
                    text.push_str(&pad_left(content, self.widths[column]));
                    text.push_str(" |");
                }
                text.push('\n');
            }
        }
        self.rule(&mut text);
        out.extend_from_slice(text.as_bytes());
    }

    fn rule(&self, text: &mut String) {
        text.push('+');
        for width in &self.widths {
            text.push_str(&"-".repeat(width + 2));
            text.push('+');
        }
        text.push('\n');
    }
}

fn title(header: &str) -> String {
    header.replace(['_', '.'], " ").trim().to_uppercase()
}

fn pad_center(text: &str, size: usize) -> String {
    let gap = size.saturating_sub(width(text));
    let left = gap / 2;
    format!("{}{text}{}", " ".repeat(left), " ".repeat(gap - left))
}

fn pad_left(text: &str, size: usize) -> String {
    let gap = size.saturating_sub(width(text));
    format!("{}{text}", " ".repeat(gap))
}

/// The library's `WrapString`: words split at single spaces (newlines count
/// as spaces), lines of at most `limit` columns (or the longest word) with
/// minimal raggedness.
fn wrap_string(text: &str, limit: usize) -> Vec<String> {
    let joined = text.replace('\n', " ");
    let words: Vec<&str> = joined.split(' ').collect();
    let limit = words.iter().map(|w| w.len()).fold(limit, usize::max);
    wrap_words(&words, limit)
        .into_iter()
        .map(|line| line.join(" "))
        .collect()
}

fn wrap_words<'a>(words: &[&'a str], limit: usize) -> Vec<Vec<&'a str>> {
    let n = words.len();
    let limit = limit as i64;
    // length[i][j]: the width of words i..=j joined by single spaces.
    let mut length = vec![vec![0i64; n]; n];
    for i in 0..n {
        length[i][i] = words[i].chars().count() as i64;
        for j in i + 1..n {
            length[i][j] = length[i][j - 1] + 1 + words[j].chars().count() as i64;
        }
    }
    let mut next_break = vec![n; n];
    let mut cost = vec![i64::from(i32::MAX); n];
    for i in (0..n).rev() {
        if length[i][n - 1] <= limit {
            cost[i] = 0;
            next_break[i] = n;
            continue;
        }
        for j in i + 1..n {
            let gap = limit - length[i][j - 1];
            let mut candidate = gap * gap + cost[j];
            if length[i][j - 1] > limit {
                candidate += TOO_LONG_PENALTY;
            }
            if candidate < cost[i] {
                cost[i] = candidate;
                next_break[i] = j;
            }
        }
    }
    let mut lines = Vec::new();
    let mut i = 0;
    while i < n {
        let end = next_break[i].max(i + 1);
        lines.push(words[i..end].to_vec());
        i = end;
    }
    lines
}

pub fn member_list(out: &mut Vec<u8>, response: &MemberListResponse) {
    let mut table = Table::new(&MEMBER_HEADER);
    for row in member_rows(response) {
        table.append(row);
    }
    table.render(out);
}

pub fn endpoint_status(out: &mut Vec<u8>, statuses: &[EndpointStatus]) {
    let mut table = Table::new(&STATUS_HEADER);
    for row in status_rows(statuses) {
        table.append(row);
    }
    table.render(out);
}

pub fn endpoint_health(out: &mut Vec<u8>, health: &[EndpointHealth]) {
    let mut table = Table::new(&HEALTH_HEADER);
    for entry in health {
        table.append(vec![
            entry.endpoint.clone(),
            entry.health.to_string(),
            entry.took.clone(),
            entry.error.clone(),
        ]);
    }
    table.render(out);
}

/// keelctl's `get -w table`: one row per key with its value and the
/// revision that last modified it.
pub fn get(out: &mut Vec<u8>, response: &RangeResponse, hex: bool) {
    let mut table = Table::new(&["KEY", "VALUE", "REVISION"]);
    for kv in &response.kvs {
        let show = |bytes: &[u8]| {
            if hex {
                hex_escaped(bytes)
            } else {
                String::from_utf8_lossy(bytes).into_owned()
            }
        };
        table.append(vec![show(&kv.key), show(&kv.value), kv.mod_revision.to_string()]);
    }
    table.render(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_drawn_as_etcdctl_draws_them() {
        let mut table = Table::new(&HEALTH_HEADER);
        table.append(vec![
            "127.0.0.1:41379".into(),
            "true".into(),
            "1.863207ms".into(),
            String::new(),
        ]);
        let mut out = Vec::new();
        table.render(&mut out);
        let expected = "\
+-----------------+--------+------------+-------+
|    ENDPOINT     | HEALTH |    TOOK    | ERROR |
+-----------------+--------+------------+-------+
| 127.0.0.1:41379 |   true | 1.863207ms |       |
+-----------------+--------+------------+-------+
";
        assert_eq!(String::from_utf8_lossy(&out), expected);
    }

    #[test]
    fn long_cells_wrap_at_spaces_and_long_words_widen_the_column() {
        assert_eq!(wrap_string("short", 30), vec!["short"]);
        let lines = wrap_string("etcdserver: some error, etcdserver: another error", 30);
        assert!(
            lines.len() > 1 && lines.iter().all(|l| l.len() <= 30),
            "{lines:?}"
        );
        assert_eq!(wrap_string(&"x".repeat(40), 30), vec!["x".repeat(40)]);
        assert_eq!(wrap_string("", 5), vec![""]);
    }
}
