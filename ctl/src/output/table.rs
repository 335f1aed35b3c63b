//! The `table` format: ASCII tables drawn as etcdctl's table library
//! (olekukonko/tablewriter at the version etcdctl 3.4 vendors) draws them:
//! upper-case centred headers, right-aligned cells, columns at most 30
//! wide unless one word is longer, and longer cells wrapped at spaces with
//! that library's minimum-raggedness rule. `get -w table` (KEY / VALUE /
//! REVISION) is keelctl's own addition; etcdctl has no table for `get`.

use std::collections::VecDeque;

use keel_api::etcdserverpb::{MemberListResponse, RangeResponse};
use unicode_width::UnicodeWidthStr;

use super::{
    hashkv_rows, member_rows, status_rows, EndpointHashKv, EndpointHealth, EndpointStatus, HASHKV_HEADER,
    HEALTH_HEADER, MEMBER_HEADER, STATUS_HEADER,
};
use crate::go_value_format::hex_escaped;

const MAX_COLUMN_WIDTH: usize = 30;

/// Display width in terminal columns, as the Go library counts it: wide
/// East Asian characters take two, combining marks none.
fn width(text: &str) -> usize {
    UnicodeWidthStr::width(text)
}

pub(crate) struct Table {
    headers: Vec<String>,
    widths: Vec<usize>,
    /// Per row, per column, the cell's lines.
    rows: Vec<Vec<Vec<String>>>,
}

impl Table {
    pub(crate) fn new(headers: &[&str]) -> Table {
        let widths = headers.iter().map(|h| width(h).min(MAX_COLUMN_WIDTH)).collect();
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            widths,
            rows: Vec::new(),
        }
    }

    pub(crate) fn append(&mut self, row: Vec<String>) {
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

    pub(crate) fn render(&self, out: &mut Vec<u8>) {
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
/// as spaces), lines of at most `limit` columns (or the widest word) with
/// minimal raggedness.
fn wrap_string(text: &str, limit: usize) -> Vec<String> {
    let joined = text.replace('\n', " ");
    let words: Vec<&str> = joined.split(' ').collect();
    let widths: Vec<usize> = words.iter().map(|word| width(word)).collect();
    let limit = widths.iter().copied().fold(limit, usize::max);
    let mut lines = Vec::new();
    let mut start = 0;
    for end in line_ends(&widths, limit) {
        lines.push(words[start..end].join(" "));
        start = end;
    }
    lines
}

/// Where each line of a minimum-raggedness wrap ends (exclusive word
/// indexes, the last one `widths.len()`), as the library's `WrapWords`
/// chooses them: the last line is free when it fits, every other line
/// costs the square of its unused columns, and among equally cheap
/// choices the earliest break wins.
///
/// The library fills an n×n table of line lengths and tries every break
/// for every word (quadratic time and memory). This computes the same
/// minimum from the end of the text backwards, keeping only the breaks
/// that can still be best: the cost of a line is a convex function of
/// its width, so once a nearer break is at least as good as a farther one
/// for some line start, it stays so for every earlier start. The
/// candidates then form a queue in which each owns a run of line starts,
/// and a new candidate finds where its run ends by binary search:
/// O(n log n) time, O(n) memory.
///
/// One deliberate difference: the library lets a line run over `limit` at
/// a fixed penalty, which can only pay off once a word is over about 150
/// columns wide; here a line over `limit` is never chosen, since `limit`
/// is at least the widest word and one word a line always fits.
fn line_ends(widths: &[usize], limit: usize) -> Vec<usize> {
    let n = widths.len();
    // offsets[k]: the columns taken by words 0..k, each with a space after.
    let mut offsets = Vec::with_capacity(n + 1);
    offsets.push(0u128);
    for word in widths {
        offsets.push(offsets[offsets.len() - 1] + *word as u128 + 1);
    }
    let limit = limit as u128;
    // The width of the line of words `start..end`.
    let line_width = |start: usize, end: usize| offsets[end] - offsets[start] - 1;
    // Lines start at every word index from here on; the rest fits on one line.
    let last_line_from = (0..n).find(|&start| line_width(start, n) <= limit).unwrap_or(n);
    let mut cost = vec![0u128; n + 1];
    let mut end_of = vec![n; n];
    // The cost of the text from `start`, with its first line ending at `end` (< n).
    let through = |cost: &[u128], start: usize, end: usize| {
        let used = line_width(start, end);
        let line = if used <= limit {
            (limit - used).pow(2)
        } else {
            // Convex past the limit too, and dearer than any text that fits.
            let over = used - limit;
            over.saturating_mul(over)
                .saturating_add(over.saturating_mul(OVER_LIMIT_COST))
        };
        line.saturating_add(cost[end])
    };
    // Breaks still in the running, farthest first; each is the best one
    // for the line starts in (the next entry's `best_up_to`, its own].
    let mut queue: VecDeque<Candidate> = VecDeque::new();
    for start in (0..n).rev() {
        if start >= last_line_from {
            cost[start] = 0;
            end_of[start] = n;
        } else {
            while queue.len() >= 2 && queue[1].best_up_to >= start {
                queue.pop_front();
            }
            if let Some(best) = queue.front() {
                cost[start] = through(&cost, start, best.end);
                end_of[start] = best.end;
            }
        }
        // `start` as a break: the end of a line that starts before it.
        if start == 0 {
            break;
        }
        let end = start;
        // Whether a line from `line_start` is as cheap ending at `end` as at `other`.
        let wins = |cost: &[u128], line_start: usize, other: usize| {
            through(cost, line_start, end) <= through(cost, line_start, other)
        };
        let mut best_up_to = Some(end - 1);
        while let Some(newest) = queue.back() {
            let top = newest.best_up_to.min(end - 1);
            if wins(&cost, top, newest.end) {
                queue.pop_back();
                continue;
            }
            best_up_to = if wins(&cost, 0, newest.end) {
                // The last line start in [0, top) for which `end` wins.
                let (mut low, mut high) = (0, top);
                while high - low > 1 {
                    let middle = low + (high - low) / 2;
                    if wins(&cost, middle, newest.end) {
                        low = middle;
                    } else {
                        high = middle;
                    }
                }
                Some(low)
            } else {
                None
            };
            break;
        }
        if let Some(best_up_to) = best_up_to {
            queue.push_back(Candidate { end, best_up_to });
        }
    }
    let mut ends = Vec::new();
    let mut start = 0;
    while start < n {
        start = end_of[start].max(start + 1);
        ends.push(start);
    }
    ends
}

/// What a line over the limit costs per column over, on top of the square:
/// more than the raggedness of any text that fits.
const OVER_LIMIT_COST: u128 = 1 << 64;

/// A break in the running in `line_ends`.
struct Candidate {
    /// The word index the line ends before.
    end: usize,
    /// The highest line start for which this break is the best.
    best_up_to: usize,
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

pub fn endpoint_hashkv(out: &mut Vec<u8>, hashes: &[EndpointHashKv]) {
    let mut table = Table::new(&HASHKV_HEADER);
    for row in hashkv_rows(hashes) {
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
        assert_eq!(
            wrap_string("etcdserver: some error, etcdserver: another error", 30),
            vec!["etcdserver: some error,", "etcdserver: another error"]
        );
        assert_eq!(wrap_string(&"x".repeat(40), 30), vec!["x".repeat(40)]);
        assert_eq!(wrap_string("", 5), vec![""]);
        assert_eq!(wrap_string("a\nb", 30), vec!["a b"]);
    }

    #[test]
    fn widths_are_display_columns() {
        // Each of these characters takes two columns, so only two fit in five.
        assert_eq!(wrap_string("日本 語の 表", 5), vec!["日本", "語の", "表"]);
        // A word of two-column characters widens the limit by its columns,
        // not its bytes (15) or its characters (5).
        assert_eq!(
            wrap_string("日本語の表 a b c d e f g h", 5),
            vec!["日本語の表", "a b c d e", "f g h"]
        );
        let mut table = Table::new(&["K"]);
        table.append(vec!["日本".into()]);
        let mut out = Vec::new();
        table.render(&mut out);
        assert_eq!(
            String::from_utf8_lossy(&out),
            "+------+\n|  K   |\n+------+\n| 日本 |\n+------+\n"
        );
    }

    /// The Go library's `WrapWords` as it is written: every break tried for
    /// every word, over a table of all line lengths (quadratic).
    fn go_wrap_words(widths: &[usize], limit: usize) -> Vec<usize> {
        let n = widths.len();
        let limit = limit as i64;
        let mut length = vec![vec![0i64; n]; n];
        for i in 0..n {
            length[i][i] = widths[i] as i64;
            for j in i + 1..n {
                length[i][j] = length[i][j - 1] + 1 + widths[j] as i64;
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
                    candidate += 100_000;
                }
                if candidate < cost[i] {
                    cost[i] = candidate;
                    next_break[i] = j;
                }
            }
        }
        let mut ends = Vec::new();
        let mut i = 0;
        while i < n {
            i = next_break[i];
            ends.push(i);
        }
        ends
    }

    #[test]
    fn breaks_are_where_the_go_library_puts_them() {
        // A fixed-seed xorshift: many texts of short words (and empty ones,
        // from doubled spaces), wrapped at many limits.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |bound: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % bound) as usize
        };
        for _ in 0..3000 {
            let count = 1 + next(60);
            let longest = 1 + next(40);
            let widths: Vec<usize> = (0..count).map(|_| next(longest as u64 + 1)).collect();
            let limit = widths.iter().copied().fold(1 + next(35), usize::max);
            assert_eq!(
                line_ends(&widths, limit),
                go_wrap_words(&widths, limit),
                "widths {widths:?}, limit {limit}"
            );
        }
    }

    #[test]
    fn a_huge_value_wraps_in_bounded_memory() {
        let words = 200_000;
        let value: String = (0..words)
            .map(|i| ["a", "bb", "ccc", "dddd", "eeeee", "ffffff", "ggggggggg"][i % 7])
            .collect::<Vec<_>>()
            .join(" ");
        let started = std::time::Instant::now();
        let (lines, peak) = allocation_meter::peak_during(|| wrap_string(&value, MAX_COLUMN_WIDTH));
        let took = started.elapsed();
        assert!(lines.iter().all(|line| width(line) <= MAX_COLUMN_WIDTH));
        assert_eq!(lines.join(" "), value);
        // The library's way needs n² line lengths: 320 GB here. Linear
        // bookkeeping takes under 80 bytes a word; 150 leaves room.
        assert!(peak < 150 * words, "wrapping took {peak} bytes at its peak");
        assert!(
            took < std::time::Duration::from_secs(20),
            "wrapping took {took:?}"
        );
    }
}

/// A global allocator for this test binary that counts, per thread, the
/// bytes live, so that a test can bound what one computation allocates.
#[cfg(test)]
mod allocation_meter {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    struct Meter;

    thread_local! {
        static LIVE: Cell<usize> = const { Cell::new(0) };
        static PEAK: Cell<usize> = const { Cell::new(0) };
    }

    fn grew(bytes: usize) {
        let live = LIVE.get().saturating_add(bytes);
        LIVE.set(live);
        PEAK.set(PEAK.get().max(live));
    }

    fn shrank(bytes: usize) {
        LIVE.set(LIVE.get().saturating_sub(bytes));
    }

    // SAFETY: every call goes to the system allocator unchanged; the
    // counters are thread-locals of plain integers, which do not allocate.
    unsafe impl GlobalAlloc for Meter {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            grew(layout.size());
            System.alloc(layout)
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            shrank(layout.size());
            System.dealloc(ptr, layout)
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            grew(new_size);
            shrank(layout.size());
            System.realloc(ptr, layout, new_size)
        }
    }

    #[global_allocator]
    static METER: Meter = Meter;

    /// Runs `work` and returns its result with the most bytes it had
    /// allocated on this thread at any one time.
    pub fn peak_during<T>(work: impl FnOnce() -> T) -> (T, usize) {
        let before = LIVE.get();
        PEAK.set(before);
        let result = work();
        (result, PEAK.get() - before)
    }
}
