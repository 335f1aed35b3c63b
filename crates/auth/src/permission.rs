//! The permission decision: may a set of key-range permissions READ or
//! WRITE the range [key, range_end)? etcd's range conventions hold for both
//! the request and the permissions: an empty range_end is the one key `key`,
//! a range_end of "\0" is every key from `key` on. A request is allowed when
//! the union of the permissions of its kind covers the whole range (so two
//! adjacent grants together allow a range neither covers alone). A
//! permission whose key is empty grants nothing, as in etcd 3.4 (checked
//! against 3.4.23: granted over the API it is stored, and every request is
//! refused); etcdctl sends "\0" for an empty key, which is every key.

use keel_api::authpb::{permission::Type as PermType, Permission};

/// What a request does to a range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    /// True when a permission of type `perm_type` allows this access.
    fn allowed_by(self, perm_type: i32) -> bool {
        match PermType::try_from(perm_type) {
            Ok(PermType::Readwrite) => true,
            Ok(PermType::Read) => self == Access::Read,
            Ok(PermType::Write) => self == Access::Write,
            Err(_) => false,
        }
    }
}

/// A half-open interval of keys; `end == None` is unbounded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interval {
    start: Vec<u8>,
    end: Option<Vec<u8>>,
}

impl Interval {
    fn of(key: &[u8], range_end: &[u8]) -> Interval {
        let end = if range_end.is_empty() {
            let mut next = key.to_vec();
            next.push(0);
            Some(next)
        } else if range_end == [0] {
            None
        } else {
            Some(range_end.to_vec())
        };
        Interval {
            start: key.to_vec(),
            end,
        }
    }

    fn is_empty(&self) -> bool {
        matches!(&self.end, Some(end) if *end <= self.start)
    }
}

/// True when `permissions` allow `access` on every key of [key, range_end).
pub fn covers(permissions: &[Permission], access: Access, key: &[u8], range_end: &[u8]) -> bool {
    let wanted = Interval::of(key, range_end);
    if wanted.is_empty() {
        // etcd refuses a range whose end is not after its start.
        return false;
    }
    let mut granted: Vec<Interval> = permissions
        .iter()
        .filter(|perm| access.allowed_by(perm.perm_type) && !perm.key.is_empty())
        .map(|perm| Interval::of(&perm.key, &perm.range_end))
        .filter(|interval| !interval.is_empty())
        .collect();
    granted.sort_by(|a, b| a.start.cmp(&b.start));
    // Walk the grants in order, extending how far from wanted.start the
    // union reaches without a gap.
    let mut reached = wanted.start.clone();
    for interval in granted {
        if interval.start > reached {
            break;
        }
        match interval.end {
            None => return true,
            Some(end) if end > reached => reached = end,
            Some(_) => {}
        }
        if let Some(wanted_end) = &wanted.end {
            if reached >= *wanted_end {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(perm_type: PermType, key: &str, range_end: &[u8]) -> Permission {
        Permission {
            perm_type: perm_type as i32,
            key: key.into(),
            range_end: range_end.to_vec(),
        }
    }

    #[test]
    fn a_single_key_permission_allows_that_key_only() {
        let perms = [perm(PermType::Read, "foo", b"")];
        assert!(covers(&perms, Access::Read, b"foo", b""));
        assert!(!covers(&perms, Access::Read, b"foo1", b""));
        assert!(
            !covers(&perms, Access::Read, b"foo", b"fop"),
            "a prefix is more than the key"
        );
        assert!(!covers(&perms, Access::Write, b"foo", b""), "read is not write");
    }

    #[test]
    fn prefix_and_from_key_permissions_cover_their_ranges() {
        let prefix = [perm(PermType::Readwrite, "dir/", b"dir0")];
        assert!(covers(&prefix, Access::Write, b"dir/a", b""));
        assert!(covers(&prefix, Access::Read, b"dir/", b"dir0"));
        assert!(covers(&prefix, Access::Read, b"dir/a", b"dir/b"));
        assert!(
            !covers(&prefix, Access::Read, b"dir/", b"\0"),
            "from-key is unbounded"
        );
        assert!(!covers(&prefix, Access::Read, b"dir", b""));

        let from_key = [perm(PermType::Write, "m", b"\0")];
        assert!(covers(&from_key, Access::Write, b"zzz", b""));
        assert!(covers(&from_key, Access::Write, b"m", b"\0"));
        assert!(!covers(&from_key, Access::Write, b"a", b""));
        assert!(!covers(&from_key, Access::Read, b"m", b""));
    }

    #[test]
    fn adjacent_grants_together_cover_a_range_neither_covers_alone() {
        let perms = [
            perm(PermType::Read, "a", b"c"),
            perm(PermType::Readwrite, "c", b"e"),
            perm(PermType::Write, "e", b"g"),
        ];
        assert!(covers(&perms, Access::Read, b"a", b"e"));
        assert!(!covers(&perms, Access::Read, b"a", b"f"), "e.. is write only");
        assert!(covers(&perms, Access::Write, b"c", b"g"));
        assert!(!covers(&perms, Access::Write, b"b", b"d"));
    }

    #[test]
    fn an_empty_or_inverted_request_range_is_not_allowed() {
        let perms = [perm(PermType::Readwrite, "\0", b"\0")];
        assert!(covers(&perms, Access::Read, b"\0", b"\0"), "every key");
        assert!(!covers(&perms, Access::Read, b"b", b"a"));
        assert!(!covers(&[], Access::Read, b"a", b""));
    }

    #[test]
    fn a_permission_with_an_empty_key_grants_nothing_as_in_etcd() {
        let empty_key = [perm(PermType::Readwrite, "", b"\0")];
        assert!(!covers(&empty_key, Access::Read, b"a", b""));
        assert!(!covers(&empty_key, Access::Write, b"\0", b"\0"));
        let every_key = [perm(PermType::Readwrite, "\0", b"\0")];
        assert!(covers(&every_key, Access::Read, b"a", b""));
    }
}
