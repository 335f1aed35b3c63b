//! Go's text conventions that etcdctl's output inherits and keelctl must
//! reproduce byte for byte: `%q` quoting (strconv.Quote), `time.Duration`
//! parsing and printing, go-humanize's `Bytes`, `%x`, the quoted-string
//! syntax etcdctl's txn grammar reads (strconv.Unquote), and gogoproto's
//! compact text of an alarm (etcd's `Status.errors`, `alarm list`).

use std::fmt::Write as _;
use std::time::Duration;

/// gogoproto's `CompactTextString` of an `AlarmMember`, as etcd puts it in
/// `Status.errors` and etcdctl prints it (`%+v`): the set fields, each
/// followed by a space (`memberID:<decimal> alarm:NOSPACE `).
pub fn alarm_member_text(alarm: &crate::etcdserverpb::AlarmMember) -> String {
    let mut text = String::new();
    if alarm.member_id != 0 {
        let _ = write!(text, "memberID:{} ", alarm.member_id);
    }
    if alarm.alarm != 0 {
        match crate::etcdserverpb::AlarmType::try_from(alarm.alarm) {
            Ok(known) => {
                let _ = write!(text, "alarm:{} ", known.as_str_name());
            }
            Err(_) => {
                let _ = write!(text, "alarm:{} ", alarm.alarm);
            }
        }
    }
    text
}

/// Go's `strconv.Quote` of a byte string (`%q` of `string(bytes)`): invalid
/// UTF-8 bytes become `\xNN`, non-printable runes `\uNNNN`/`\UNNNNNNNN`.
pub fn quote(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() + 2);
    out.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            push_quoted_char(&mut out, c);
        }
        for byte in chunk.invalid() {
            let _ = write!(out, "\\x{byte:02x}");
        }
    }
    out.push('"');
    out
}

fn push_quoted_char(out: &mut String, c: char) {
    match c {
        '"' => out.push_str("\\\""),
        '\\' => out.push_str("\\\\"),
        '\x07' => out.push_str("\\a"),
        '\x08' => out.push_str("\\b"),
        '\x0c' => out.push_str("\\f"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\x0b' => out.push_str("\\v"),
        c if is_go_printable(c) => out.push(c),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if (c as u32) < 0x10000 => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\U{:08x}", c as u32);
        }
    }
}

/// An approximation of Go's `strconv.IsPrint` (letters, marks, numbers,
/// punctuation, symbols and the ASCII space): control and format
/// characters, the non-ASCII spaces and private-use runes are not printable.
/// Unassigned code points are treated as printable (Go escapes them).
fn is_go_printable(c: char) -> bool {
    let u = c as u32;
    if u < 0x20 || (0x7f..0xa1).contains(&u) || u == 0xad {
        return false;
    }
    !matches!(u,
        0x1680 | 0x180e | 0x2000..=0x200f | 0x2028..=0x202f | 0x205f..=0x206f | 0x3000 | 0xfeff
        | 0xfff9..=0xfffb | 0xe000..=0xf8ff | 0xf0000..=0x10ffff
    )
}

/// Go's `strconv.Unquote` for the two forms `fmt.Sscanf("%q")` accepts:
/// a double-quoted string with Go escapes, or a back-quoted raw string.
/// Returns the bytes and the rest of the input after the closing quote.
pub fn unquote_prefix(input: &str) -> Result<(Vec<u8>, &str), String> {
    let mut chars = input.char_indices();
    match chars.next() {
        Some((_, '`')) => {
            let rest = &input[1..];
            let end = rest
                .find('`')
                .ok_or_else(|| "unterminated raw string".to_string())?;
            let raw: Vec<u8> = rest[..end].bytes().filter(|b| *b != b'\r').collect();
            Ok((raw, &rest[end + 1..]))
        }
        Some((_, '"')) => {
            let mut out = Vec::new();
            while let Some((index, c)) = chars.next() {
                match c {
                    '"' => return Ok((out, &input[index + 1..])),
                    '\n' => return Err("newline in quoted string".into()),
                    '\\' => {
                        let (_, escape) = chars.next().ok_or("unterminated escape")?;
                        match escape {
                            'a' => out.push(7),
                            'b' => out.push(8),
                            'f' => out.push(12),
                            'n' => out.push(b'\n'),
                            'r' => out.push(b'\r'),
                            't' => out.push(b'\t'),
                            'v' => out.push(11),
                            '\\' => out.push(b'\\'),
                            '"' => out.push(b'"'),
                            '\'' => return Err("invalid escape \\' in a double-quoted string".into()),
                            'x' => out.push(hex_digits(&mut chars, 2)? as u8),
                            'u' | 'U' => {
                                let count = if escape == 'u' { 4 } else { 8 };
                                let value = hex_digits(&mut chars, count)?;
                                let c = char::from_u32(value).ok_or("invalid unicode escape")?;
                                let mut buffer = [0u8; 4];
                                out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                            }
                            '0'..='7' => {
                                let mut value = escape.to_digit(8).unwrap_or(0);
                                for _ in 0..2 {
                                    let (_, d) = chars.next().ok_or("unterminated octal escape")?;
                                    value = value * 8 + d.to_digit(8).ok_or("invalid octal escape")?;
                                }
                                if value > 255 {
                                    return Err("octal escape out of range".into());
                                }
                                out.push(value as u8);
                            }
                            other => return Err(format!("invalid escape \\{other}")),
                        }
                    }
                    c => {
                        let mut buffer = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buffer).as_bytes());
                    }
                }
            }
            Err("unterminated quoted string".into())
        }
        _ => Err("expected a quoted string".into()),
    }
}

fn hex_digits(chars: &mut std::str::CharIndices<'_>, count: usize) -> Result<u32, String> {
    let mut value = 0u32;
    for _ in 0..count {
        let (_, d) = chars.next().ok_or("unterminated hex escape")?;
        value = value * 16 + d.to_digit(16).ok_or("invalid hex escape")?;
    }
    Ok(value)
}

/// Go's `strconv.ParseInt(text, 0, 64)`, as pflag parses an int64 flag:
/// an optional sign, then decimal, `0x` hex, `0o`/leading-`0` octal or
/// `0b` binary digits; fails with Go's error text.
pub fn parse_int64(text: &str) -> Result<i64, String> {
    let failure = |reason: &str| format!("strconv.ParseInt: parsing {}: {reason}", quote(text.as_bytes()));
    let (negative, unsigned) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    let lower = unsigned.to_ascii_lowercase();
    let (radix, digits) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..])
    } else {
        (10, lower.as_str())
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return Err(failure("invalid syntax"));
    }
    let magnitude = u64::from_str_radix(digits, radix).map_err(|_| failure("value out of range"))?;
    let limit = if negative { 1u64 << 63 } else { (1u64 << 63) - 1 };
    if magnitude > limit {
        return Err(failure("value out of range"));
    }
    Ok(if negative {
        (magnitude as i64).wrapping_neg()
    } else {
        magnitude as i64
    })
}

/// Go's `time.ParseDuration` ("2s", "500ms", "1m30s", "1.5h", "0").
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("time: invalid duration {}", quote(text.as_bytes()));
    let mut rest = text;
    if let Some(stripped) = rest.strip_prefix('+') {
        rest = stripped;
    } else if rest.starts_with('-') {
        if rest == "-0" {
            return Ok(Duration::ZERO);
        }
        return Err(format!(
            "negative duration {} is not allowed",
            quote(text.as_bytes())
        ));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_end];
        if number.is_empty() || number == "." {
            return Err(invalid());
        }
        let value: f64 = number.parse().map_err(|_| invalid())?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let nanos_per_unit = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "time: missing unit in duration {}",
                    quote(text.as_bytes())
                ))
            }
            unit => {
                return Err(format!(
                    "time: unknown unit {} in duration {}",
                    quote(unit.as_bytes()),
                    quote(text.as_bytes())
                ))
            }
        };
        rest = &rest[unit_end..];
        total += value * nanos_per_unit;
    }
    if total > u64::MAX as f64 {
        return Err(invalid());
    }
    Ok(Duration::from_nanos(total.round() as u64))
}

/// Go's `time.Duration.String()`: "1.5s", "2.260089ms", "850µs", "1m2s", "0s".
pub fn format_duration(duration: Duration) -> String {
    let nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".into();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", fraction(nanos, scale));
    }
    let mut out = String::new();
    let hours = nanos / 3_600_000_000_000;
    let minutes = (nanos / 60_000_000_000) % 60;
    let seconds_nanos = nanos % 60_000_000_000;
    if hours > 0 {
        let _ = write!(out, "{hours}h");
    }
    if hours > 0 || minutes > 0 {
        let _ = write!(out, "{minutes}m");
    }
    let _ = write!(out, "{}s", fraction(seconds_nanos, 1_000_000_000));
    out
}

/// `value / scale` with the fraction's trailing zeros dropped.
fn fraction(value: u128, scale: u128) -> String {
    let whole = value / scale;
    let part = value % scale;
    if part == 0 {
        return whole.to_string();
    }
    let digits = scale.to_string().len() - 1;
    let decimals = format!("{part:0digits$}");
    format!("{whole}.{}", decimals.trim_end_matches('0'))
}

/// go-humanize's `Bytes`: SI units, "20 kB", "1.5 MB", "9 B".
pub fn humanize_bytes(size: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    if size < 10 {
        return format!("{size} B");
    }
    let mut exponent = 0usize;
    let mut power = 1u64;
    while exponent + 1 < UNITS.len() && power.saturating_mul(1000) <= size {
        power *= 1000;
        exponent += 1;
    }
    let value = ((size as f64 / power as f64) * 10.0 + 0.5).floor() / 10.0;
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[exponent])
    } else {
        format!("{value:.0} {}", UNITS[exponent])
    }
}

/// `\xNN` for every byte (etcdctl's `--hex`).
pub fn hex_escaped(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4);
    for byte in bytes {
        let _ = write!(out, "\\x{byte:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn int64_flags_parse_as_pflag_does() {
        assert_eq!(parse_int64("42"), Ok(42));
        assert_eq!(parse_int64("-1"), Ok(-1));
        assert_eq!(parse_int64("0x10"), Ok(16));
        assert_eq!(parse_int64("010"), Ok(8));
        assert_eq!(parse_int64("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(
            parse_int64("abc"),
            Err("strconv.ParseInt: parsing \"abc\": invalid syntax".to_string())
        );
        assert_eq!(
            parse_int64("9223372036854775808"),
            Err("strconv.ParseInt: parsing \"9223372036854775808\": value out of range".to_string())
        );
        assert!(parse_int64("").is_err() && parse_int64("-").is_err() && parse_int64("1.5").is_err());
    }

    #[test]
    fn quote_follows_go() {
        assert_eq!(quote(b"a/1"), "\"a/1\"");
        assert_eq!(quote(b"y<&>\"\\"), "\"y<&>\\\"\\\\\"");
        assert_eq!(quote(b"\n\t\x00\x7f"), "\"\\n\\t\\x00\\x7f\"");
        assert_eq!(quote(b"\xff\xfe"), "\"\\xff\\xfe\"");
        assert_eq!(quote("é€".as_bytes()), "\"é€\"");
        assert_eq!(quote("\u{200b}".as_bytes()), "\"\\u200b\"");
    }

    #[test]
    fn unquote_reads_go_strings() {
        assert_eq!(
            unquote_prefix("\"a\\x00b\") > x").unwrap(),
            (b"a\x00b".to_vec(), ") > x")
        );
        assert_eq!(
            unquote_prefix("`raw\\n`rest").unwrap(),
            (b"raw\\n".to_vec(), "rest")
        );
        assert_eq!(unquote_prefix("\"\\u00e9\"").unwrap().0, "é".as_bytes());
        assert!(unquote_prefix("\"open").is_err());
        assert!(unquote_prefix("bare").is_err());
    }

    #[test]
    fn durations_parse_and_print_as_go_does() {
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("abc").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(format_duration(Duration::from_nanos(2_260_089)), "2.260089ms");
        assert_eq!(format_duration(Duration::from_micros(850)), "850µs");
        assert_eq!(format_duration(Duration::from_nanos(12)), "12ns");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(format_duration(Duration::from_secs(62)), "1m2s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h0m0s");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }

    #[test]
    fn bytes_are_humanized_as_go_humanize_does() {
        assert_eq!(humanize_bytes(0), "0 B");
        assert_eq!(humanize_bytes(9), "9 B");
        assert_eq!(humanize_bytes(82), "82 B");
        assert_eq!(humanize_bytes(20480), "20 kB");
        assert_eq!(humanize_bytes(25000), "25 kB");
        assert_eq!(humanize_bytes(1000), "1.0 kB");
        assert_eq!(humanize_bytes(1_500_000), "1.5 MB");
        assert_eq!(humanize_bytes(999_999), "1000 kB");
    }

    #[test]
    fn hex_escapes_every_byte() {
        assert_eq!(hex_escaped(b"a/1"), "\\x61\\x2f\\x31");
        assert_eq!(hex_escaped(b""), "");
    }
}
