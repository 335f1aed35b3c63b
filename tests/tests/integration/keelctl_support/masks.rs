//! Masks for the lease, lock and elect golden tests: the parts of a tool's
//! output that necessarily differ between two runs (a lease ID each tool
//! got for itself, a TTL counting down, an order the server may change),
//! replaced or normalized so that the rest compares byte for byte.

use super::{without_client_logs, Ran};

/// `lease_hex`: Go's `%016x` of a positive lease ID.
pub fn hex(id: i64) -> String {
    format!("{id:016x}")
}

/// `text` with every run of digits (and a leading '-') after each `marker`
/// replaced by `N`.
pub fn mask_number_after(text: &[u8], marker: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.windows(marker.len()).position(|w| w == marker) {
        let after = at + marker.len();
        out.extend_from_slice(&rest[..after]);
        let mut end = after;
        while end < rest.len() && (rest[end].is_ascii_digit() || (end == after && rest[end] == b'-')) {
            end += 1;
        }
        out.push(b'N');
        rest = &rest[end..];
    }
    out.extend_from_slice(rest);
    out
}

pub fn replace(text: &[u8], from: &str, to: &str) -> Vec<u8> {
    String::from_utf8_lossy(text).replace(from, to).into_bytes()
}

/// `ran` with lease `id` masked in hex and decimal.
pub fn mask_id(ran: &Ran, id: i64) -> Ran {
    let stdout = replace(&ran.stdout, &hex(id), "<ID>");
    let stdout = replace(&stdout, &id.to_string(), "<ID>");
    Ran {
        stdout,
        ..ran.clone()
    }
}

/// `ran` with a time-to-live's remaining TTL masked in every format.
pub fn mask_remaining(ran: &Ran) -> Ran {
    let stdout = mask_number_after(&ran.stdout, b"remaining(");
    let stdout = mask_number_after(&stdout, b"\"ttl\":");
    let stdout = mask_number_after(&stdout, b"\"TTL\" : ");
    Ran {
        stdout,
        ..ran.clone()
    }
}

/// `ran` with its stdout's lines, and a json list's `{"id":N}` entries, sorted.
pub fn with_sorted_leases(ran: &Ran) -> Ran {
    let text = ran.stdout_text();
    let stdout = if let Some(start) = text.find("\"leases\":[") {
        let open = start + "\"leases\":[".len();
        let close = open + text[open..].find(']').unwrap_or(0);
        let mut entries: Vec<&str> = text[open..close].split(',').collect();
        entries.sort();
        format!("{}{}{}", &text[..open], entries.join(","), &text[close..])
    } else {
        let mut lines: Vec<&str> = text.split('\n').collect();
        lines.sort();
        lines.join("\n")
    };
    Ran {
        stdout: stdout.into_bytes(),
        ..ran.clone()
    }
}

/// `text` with the hex digits after each `marker` replaced by `<LEASE>`.
pub fn mask_lease_after(text: &[u8], marker: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(text);
    let mut out = String::new();
    let mut rest = text.as_ref();
    while let Some(at) = rest.find(marker) {
        let after = at + marker.len();
        out.push_str(&rest[..after]);
        let digits = rest[after..].chars().take_while(char::is_ascii_hexdigit).count();
        out.push_str("<LEASE>");
        rest = &rest[after + digits..];
    }
    out.push_str(rest);
    out.into_bytes()
}

pub fn masked_lease(ran: &Ran, marker: &str) -> Ran {
    Ran {
        stdout: mask_lease_after(&ran.stdout, marker),
        stderr: without_client_logs(&ran.stderr),
        ..ran.clone()
    }
}
