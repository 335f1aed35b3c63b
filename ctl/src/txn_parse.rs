//! etcdctl's txn grammar. The input has three sections, each ended by an
//! empty line: compares (`mod("key") > "0"`, `value("key") = "v"`, targets
//! ver/version, c/create, m/mod, val/value, lease; ops = != < >), then the
//! success requests and the failure requests, one `put`/`get`/`del`
//! command line each, with the same flags as the commands themselves.

use std::ffi::OsString;
use std::io::BufRead;
use std::os::unix::ffi::OsStringExt;

use clap::Parser;
use keel_api::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use keel_api::etcdserverpb::request_op::Request;
use keel_api::etcdserverpb::{Compare, RequestOp};

use crate::commands::kv::{
    delete_request, put_request, range_request, DelArgs, GetArgs, PutArgs, ValueSource,
};
use crate::error::CtlError;
use crate::go_value_format::{quote, unquote_prefix};

/// One request line of a txn, parsed with the commands' own flags.
#[derive(Parser, Debug)]
#[command(
    no_binary_name = true,
    disable_help_subcommand = true,
    disable_help_flag = true
)]
enum TxnOp {
    Put(PutArgs),
    Get(GetArgs),
    Del(DelArgs),
}

/// The three sections of a txn.
pub enum Section {
    Compares,
    Success,
    Failure,
}

impl Section {
    pub fn prompt(&self) -> &'static str {
        match self {
            Section::Compares => "compares:",
            Section::Success => "success requests (get, put, del):",
            Section::Failure => "failure requests (get, put, del):",
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Section::Compares => "compares",
            Section::Success => "success requests",
            Section::Failure => "failure requests",
        }
    }
}

/// Reads one section's lines up to its empty line, handing each to `each`
/// as soon as it is read (so a bad line is reported before a missing end).
pub fn read_section(
    input: &mut dyn BufRead,
    section: &Section,
    each: &mut dyn FnMut(&str) -> Result<(), CtlError>,
) -> Result<(), CtlError> {
    loop {
        let mut raw = Vec::new();
        let read = input
            .read_until(b'\n', &mut raw)
            .map_err(|e| CtlError::invalid_input(e.to_string()))?;
        if read == 0 || raw.last() != Some(&b'\n') {
            return Err(CtlError::invalid_input(format!(
                "EOF: the txn input ended inside its {}; each of the three sections \
                 (compares, success requests, failure requests) must end with an empty line",
                section.name()
            )));
        }
        let line =
            String::from_utf8(raw).map_err(|_| CtlError::invalid_input("txn input is not valid UTF-8"))?;
        let line = line.trim();
        if line.is_empty() {
            return Ok(());
        }
        each(line)?;
    }
}

/// Parses one compare line, e.g. `mod("key") > "0"`.
pub fn parse_compare(line: &str) -> Result<Compare, CtlError> {
    let malformed = |detail: String| CtlError::invalid_input(format!("malformed comparison: {line}{detail}"));
    let Some((target, rest)) = line.split_once('(') else {
        return Err(malformed(String::new()));
    };
    // fmt.Sscanf(rest, "%q) %s %q", &key, &op, &value)
    let scanned = scan_compare(rest);
    let (key, op, value) = match scanned {
        (Some(key), Some(op), Some(value)) => (key, op, value),
        (key, op, value) => {
            let key = key.unwrap_or_default();
            return Err(malformed(format!(
                "; got {target}({}) {} {}",
                quote(&key),
                op.unwrap_or_default(),
                quote(&value.unwrap_or_default())
            )));
        }
    };
    let result = match op.as_str() {
        "=" => CompareResult::Equal,
        "!=" => CompareResult::NotEqual,
        "<" => CompareResult::Less,
        ">" => CompareResult::Greater,
        other => {
            return Err(malformed(format!(
                " (unknown result op {other}; use =, !=, < or >)"
            )))
        }
    };
    let number = || -> Result<i64, CtlError> {
        std::str::from_utf8(&value)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or_else(|| CtlError::invalid_input(format!("invalid txn compare request: {line}")))
    };
    let (target, union) = match target {
        "ver" | "version" => (CompareTarget::Version, TargetUnion::Version(number()?)),
        "c" | "create" => (CompareTarget::Create, TargetUnion::CreateRevision(number()?)),
        "m" | "mod" => (CompareTarget::Mod, TargetUnion::ModRevision(number()?)),
        "val" | "value" => (CompareTarget::Value, TargetUnion::Value(value)),
        "lease" => (CompareTarget::Lease, TargetUnion::Lease(number()?)),
        other => return Err(malformed(format!(" (unknown target {other})"))),
    };
    Ok(Compare {
        result: result as i32,
        target: target as i32,
        key,
        range_end: Vec::new(),
        target_union: Some(union),
    })
}

/// Go's `Sscanf("%q) %s %q")`: each part that scanned, in order.
fn scan_compare(input: &str) -> (Option<Vec<u8>>, Option<String>, Option<Vec<u8>>) {
    let Ok((key, rest)) = unquote_prefix(input.trim_start()) else {
        return (None, None, None);
    };
    let Some(rest) = rest.strip_prefix(')') else {
        return (Some(key), None, None);
    };
    let rest = rest.trim_start();
    let op_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    if op_end == 0 {
        return (Some(key), None, None);
    }
    let op = rest[..op_end].to_string();
    match unquote_prefix(rest[op_end..].trim_start()) {
        Ok((value, _)) => (Some(key), Some(op), Some(value)),
        Err(_) => (Some(key), Some(op), None),
    }
}

/// Splits a request line into arguments as etcdctl's `argify` does:
/// "double quoted" (Go escapes), 'single quoted' (verbatim) or bare words.
/// Fails with the reason a quoted word is malformed (`txn` and `watch -i`
/// each report it in their own words).
pub fn argify(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut args = Vec::new();
    let mut rest = line;
    loop {
        rest = rest.trim_start();
        let Some(first) = rest.chars().next() else {
            return Ok(args);
        };
        match first {
            '"' => {
                let (arg, after) = unquote_prefix(rest)?;
                args.push(arg);
                rest = after;
            }
            '\'' => {
                let Some(end) = rest[1..].find('\'') else {
                    return Err("unterminated single quote".to_string());
                };
                args.push(rest.as_bytes()[1..1 + end].to_vec());
                rest = &rest[end + 2..];
            }
            _ => {
                let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                args.push(rest.as_bytes()[..end].to_vec());
                rest = &rest[end..];
            }
        }
    }
}

/// Parses one request line, e.g. `put key "some value" --prev-kv`.
pub fn parse_request(line: &str) -> Result<RequestOp, CtlError> {
    let args =
        argify(line).map_err(|e| CtlError::invalid_input(format!("invalid txn request: {line} ({e})")))?;
    if args.len() < 2 {
        return Err(CtlError::invalid_input(format!(
            "invalid txn compare request: {line}"
        )));
    }
    let os_args = args.into_iter().map(OsString::from_vec);
    let op = TxnOp::try_parse_from(os_args)
        .map_err(|_| CtlError::invalid_input(format!("invalid txn request: {line}")))?;
    let request = match op {
        TxnOp::Put(args) => Request::RequestPut(put_request(&args, ValueSource::Absent)?),
        TxnOp::Get(args) => Request::RequestRange(range_request(&args)?),
        TxnOp::Del(args) => Request::RequestDeleteRange(delete_request(&args)?),
    };
    Ok(RequestOp {
        request: Some(request),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_parse_as_etcdctl_parses_them() {
        let compare = parse_compare("mod(\"foo\") > \"0\"").unwrap();
        assert_eq!(compare.key, b"foo");
        assert_eq!(compare.result, CompareResult::Greater as i32);
        assert_eq!(compare.target_union, Some(TargetUnion::ModRevision(0)));
        let compare = parse_compare("value(\"k\") != \"a b\"").unwrap();
        assert_eq!(compare.target_union, Some(TargetUnion::Value(b"a b".to_vec())));
        assert_eq!(compare.result, CompareResult::NotEqual as i32);
        assert!(parse_compare("ver(\"k\") = \"1\"").is_ok());
        assert!(parse_compare("c(`k`) < \"9\"").is_ok());
    }

    #[test]
    fn malformed_compares_are_invalid_input() {
        for line in [
            "bad",
            "mod(\"foo\") ? \"0\"",
            "mod(\"foo\") > 0",
            "mod(foo) > \"0\"",
            "mod(\"foo\") > \"x\"",
            "nope(\"foo\") = \"1\"",
        ] {
            let error = parse_compare(line).unwrap_err();
            assert_eq!(error.code, 3, "{line}");
            assert!(error.message.contains(line), "{}", error.message);
        }
    }

    #[test]
    fn request_lines_use_the_commands_flags() {
        let op = parse_request("put k \"a value\" --prev-kv").unwrap();
        let Some(Request::RequestPut(put)) = op.request else {
            panic!("not a put");
        };
        assert_eq!(
            (put.key, put.value, put.prev_kv),
            (b"k".to_vec(), b"a value".to_vec(), true)
        );
        let op = parse_request("get a --prefix --keys-only").unwrap();
        let Some(Request::RequestRange(range)) = op.request else {
            panic!("not a get");
        };
        assert_eq!((range.range_end, range.keys_only), (b"b".to_vec(), true));
        assert!(parse_request("del k").is_ok());
        assert_eq!(parse_request("frob x").unwrap_err().code, 3);
        assert_eq!(parse_request("put").unwrap_err().code, 3);
        assert_eq!(parse_request("put k").unwrap_err().code, 128);
        assert_eq!(parse_request("get k --bogus").unwrap_err().code, 3);
    }

    #[test]
    fn argify_splits_quoted_words() {
        let args = argify("put 'a b' \"c\\td\" e").unwrap();
        assert_eq!(
            args,
            vec![b"put".to_vec(), b"a b".to_vec(), b"c\td".to_vec(), b"e".to_vec()]
        );
        assert!(argify("put \"open").is_err());
    }

    #[test]
    fn sections_end_at_empty_lines_and_eof_is_an_error() {
        let mut input: &[u8] = b"a\n b \n\nc\n";
        let mut lines = Vec::new();
        let mut collect = |line: &str| {
            lines.push(line.to_string());
            Ok(())
        };
        read_section(&mut input, &Section::Compares, &mut collect).unwrap();
        assert_eq!(
            read_section(&mut input, &Section::Success, &mut collect)
                .unwrap_err()
                .code,
            3
        );
        assert_eq!(lines, vec!["a", "b", "c"]);
    }
}
