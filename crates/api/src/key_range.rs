//! etcd's key-range conventions, shared by the server, the client and mvcc:
//! an empty `range_end` means the single key, `range_end == "\0"` means every
//! key from `key` on, and a prefix is `key` with its last byte incremented.

/// The `range_end` that selects every key starting with `prefix`
/// (etcd's `GetPrefixRangeEnd`). A prefix of only 0xff bytes, or an empty
/// prefix, has no upper bound and yields `"\0"` (all keys from `prefix` on).
pub fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The `range_end` meaning "every key from `key` on" (`--from-key`).
pub const FROM_KEY_RANGE_END: &[u8] = &[0];

/// How a `(key, range_end)` pair selects keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySelection<'a> {
    /// Exactly one key.
    Single(&'a [u8]),
    /// `[start, end)`; `end == None` means unbounded above.
    Range { start: &'a [u8], end: Option<&'a [u8]> },
}

impl<'a> KeySelection<'a> {
    pub fn from_request(key: &'a [u8], range_end: &'a [u8]) -> Self {
        if range_end.is_empty() {
            KeySelection::Single(key)
        } else if range_end == FROM_KEY_RANGE_END {
            KeySelection::Range {
                start: key,
                end: None,
            }
        } else {
            KeySelection::Range {
                start: key,
                end: Some(range_end),
            }
        }
    }

    pub fn contains(&self, candidate: &[u8]) -> bool {
        match self {
            KeySelection::Single(key) => candidate == *key,
            KeySelection::Range { start, end } => {
                candidate >= *start && end.map_or(true, |end| candidate < end)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_range_end(b"abc"), b"abd".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn selection_follows_etcds_range_end_conventions() {
        assert!(KeySelection::from_request(b"a", b"").contains(b"a"));
        assert!(!KeySelection::from_request(b"a", b"").contains(b"ab"));
        assert!(KeySelection::from_request(b"a", b"\0").contains(b"zzz"));
        assert!(KeySelection::from_request(b"a", b"b").contains(b"a\xff"));
        assert!(!KeySelection::from_request(b"a", b"b").contains(b"b"));
        assert!(!KeySelection::from_request(b"b", b"a").contains(b"b"));
    }
}
