//! `put`, `get`, `del` and `compaction`: their flags, the etcd requests they
//! build (with etcdctl's argument checks and messages, and clientv3's
//! range and sort conventions), and running them. `txn` reuses the
//! argument structs and request builders for its operations.

use std::ffi::OsString;
use std::io::Read;
use std::os::unix::ffi::OsStringExt;

use clap::Args;
use keel_api::etcdserverpb::range_request::{SortOrder, SortTarget};
use keel_api::etcdserverpb::{CompactionRequest, DeleteRangeRequest, PutRequest, RangeRequest};
use keel_api::key_range::{prefix_range_end, FROM_KEY_RANGE_END};

use super::Ctx;
use crate::error::CtlError;
use crate::go_bool::GoBoolFlag;
use crate::output::{Format, Output};

#[derive(Args, Debug, Clone, Default)]
pub struct PutArgs {
    /// The key to write.
    #[arg(value_name = "KEY")]
    pub key: Option<OsString>,
    /// The value (read from stdin when absent).
    #[arg(value_name = "VALUE")]
    pub value: Option<OsString>,
    #[arg(hide = true, value_name = "EXTRA")]
    pub extra: Vec<OsString>,
    /// Return the previous key-value pair before modification.
    #[arg(long = "prev-kv", go_bool_default = false)]
    pub prev_kv: bool,
    /// Update the key using its current value.
    #[arg(long = "ignore-value", go_bool_default = false)]
    pub ignore_value: bool,
    /// Update the key using its current lease.
    #[arg(long = "ignore-lease", go_bool_default = false)]
    pub ignore_lease: bool,
    /// Lease ID (in hexadecimal) to attach to the key.
    #[arg(long, default_value = "0")]
    pub lease: String,
}

#[derive(Args, Debug, Clone, Default)]
pub struct GetArgs {
    /// The key, or the start of the range.
    #[arg(value_name = "KEY")]
    pub key: Option<OsString>,
    /// The end of the range [KEY, RANGE_END).
    #[arg(value_name = "RANGE_END")]
    pub range_end: Option<OsString>,
    #[arg(hide = true, value_name = "EXTRA")]
    pub extra: Vec<OsString>,
    /// Linearizable(l) or Serializable(s).
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Order of results; ASCEND or DESCEND (ASCEND by default).
    #[arg(long, default_value = "")]
    pub order: String,
    /// Sort target; CREATE, KEY, MODIFY, VALUE, or VERSION.
    #[arg(long = "sort-by", default_value = "")]
    pub sort_by: String,
    /// Maximum number of results.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub limit: i64,
    /// Get keys with matching prefix.
    #[arg(long, go_bool_default = false)]
    pub prefix: bool,
    /// Get keys that are greater than or equal to the given key using byte compare.
    #[arg(long = "from-key", go_bool_default = false)]
    pub from_key: bool,
    /// Specify the kv revision.
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    pub rev: i64,
    /// Get only the keys.
    #[arg(long = "keys-only", go_bool_default = false)]
    pub keys_only: bool,
    /// Get only the count (with -w fields or -w json).
    #[arg(long = "count-only", go_bool_default = false)]
    pub count_only: bool,
    /// Only write values when using the "simple" output format.
    #[arg(long = "print-value-only", go_bool_default = false)]
    pub print_value_only: bool,
}

#[derive(Args, Debug, Clone, Default)]
pub struct DelArgs {
    /// The key, or the start of the range.
    #[arg(value_name = "KEY")]
    pub key: Option<OsString>,
    /// The end of the range [KEY, RANGE_END).
    #[arg(value_name = "RANGE_END")]
    pub range_end: Option<OsString>,
    #[arg(hide = true, value_name = "EXTRA")]
    pub extra: Vec<OsString>,
    /// Delete keys with matching prefix.
    #[arg(long, go_bool_default = false)]
    pub prefix: bool,
    /// Return deleted key-value pairs.
    #[arg(long = "prev-kv", go_bool_default = false)]
    pub prev_kv: bool,
    /// Delete keys that are greater than or equal to the given key using byte compare.
    #[arg(long = "from-key", go_bool_default = false)]
    pub from_key: bool,
}

#[derive(Args, Debug, Clone)]
pub struct CompactionArgs {
    /// The revision to compact the history up to.
    #[arg(value_name = "REVISION")]
    pub revision: Vec<String>,
    /// Wait for compaction to physically remove all old revisions.
    #[arg(long, go_bool_default = false)]
    pub physical: bool,
}

fn bytes(arg: &Option<OsString>) -> Option<Vec<u8>> {
    arg.clone().map(OsString::into_vec)
}

/// Where a put's value comes from when it is not an argument.
pub enum ValueSource<'a> {
    Stdin(&'a mut dyn Read),
    /// Inside a txn: the value must be given.
    Absent,
}

const PUT_USAGE: &str = "put command needs 1 argument and input from stdin or 2 arguments";

pub fn put_request(args: &PutArgs, source: ValueSource<'_>) -> Result<PutRequest, CtlError> {
    let key = bytes(&args.key).ok_or_else(|| CtlError::bad_args(PUT_USAGE))?;
    if args.ignore_value && args.value.is_some() {
        return Err(CtlError::bad_args(
            "put command needs only 1 argument when 'ignore-value' is set",
        ));
    }
    let value = if args.ignore_value {
        Vec::new()
    } else if let Some(value) = bytes(&args.value) {
        value
    } else {
        let mut value = Vec::new();
        match source {
            ValueSource::Stdin(stdin) => {
                if stdin.read_to_end(&mut value).is_err() || value.is_empty() {
                    return Err(CtlError::bad_args(PUT_USAGE));
                }
            }
            ValueSource::Absent => return Err(CtlError::bad_args(PUT_USAGE)),
        }
        value
    };
    let lease = super::lease::parse_int(&args.lease, 16)
        .map_err(|e| CtlError::bad_args(format!("bad lease ID ({e}), expecting ID in Hex")))?;
    Ok(PutRequest {
        key,
        value,
        lease,
        prev_kv: args.prev_kv,
        ignore_value: args.ignore_value,
        ignore_lease: args.ignore_lease,
    })
}

const PREFIX_AND_FROM_KEY: &str = "`--prefix` and `--from-key` cannot be set at the same time, choose one";
const TOO_MANY_WITH_PREFIX: &str =
    "too many arguments, only accept one argument when `--prefix` or `--from-key` is set";

/// The (key, range_end) that etcdctl's range flags select.
fn key_range(
    key: Vec<u8>,
    range_end: Option<Vec<u8>>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>), CtlError> {
    if range_end.is_some() && (prefix || from_key) {
        return Err(CtlError::bad_args(TOO_MANY_WITH_PREFIX));
    }
    if prefix {
        if key.is_empty() {
            return Ok((FROM_KEY_RANGE_END.to_vec(), FROM_KEY_RANGE_END.to_vec()));
        }
        let end = prefix_range_end(&key);
        return Ok((key, end));
    }
    if from_key {
        let key = if key.is_empty() {
            FROM_KEY_RANGE_END.to_vec()
        } else {
            key
        };
        return Ok((key, FROM_KEY_RANGE_END.to_vec()));
    }
    Ok((key, range_end.unwrap_or_default()))
}

pub fn range_request(args: &GetArgs) -> Result<RangeRequest, CtlError> {
    let key = bytes(&args.key).ok_or_else(|| {
        CtlError::bad_args("get command needs one argument as key and an optional argument as range_end")
    })?;
    if args.prefix && args.from_key {
        return Err(CtlError::bad_args(PREFIX_AND_FROM_KEY));
    }
    if args.keys_only && args.count_only {
        return Err(CtlError::bad_args(
            "`--keys-only` and `--count-only` cannot be set at the same time, choose one",
        ));
    }
    let serializable = match args.consistency.as_str() {
        "s" => true,
        "l" => false,
        other => {
            return Err(CtlError::bad_feature(format!(
                "unknown consistency flag {}",
                crate::go_value_format::quote(other.as_bytes())
            )))
        }
    };
    let mut order = match args.order.to_uppercase().as_str() {
        "ASCEND" => SortOrder::Ascend,
        "DESCEND" => SortOrder::Descend,
        "" => SortOrder::None,
        _ => return Err(CtlError::bad_feature(format!("bad sort order {}", args.order))),
    };
    let target = match args.sort_by.to_uppercase().as_str() {
        "CREATE" => SortTarget::Create,
        "KEY" | "" => SortTarget::Key,
        "MODIFY" => SortTarget::Mod,
        "VALUE" => SortTarget::Value,
        "VERSION" => SortTarget::Version,
        _ => return Err(CtlError::bad_feature(format!("bad sort target {}", args.sort_by))),
    };
    // clientv3: keys come back in ascending key order anyway, so it sends
    // no order for an ascending sort by key.
    if target == SortTarget::Key && order == SortOrder::Ascend {
        order = SortOrder::None;
    }
    let (key, range_end) = key_range(key, bytes(&args.range_end), args.prefix, args.from_key)?;
    Ok(RangeRequest {
        key,
        range_end,
        limit: args.limit,
        revision: args.rev.max(0),
        sort_order: order as i32,
        sort_target: target as i32,
        serializable,
        keys_only: args.keys_only,
        count_only: args.count_only,
        ..Default::default()
    })
}

pub fn delete_request(args: &DelArgs) -> Result<DeleteRangeRequest, CtlError> {
    let usage = "del command needs one argument as key and an optional argument as range_end";
    let key = bytes(&args.key).ok_or_else(|| CtlError::bad_args(usage))?;
    if !args.extra.is_empty() {
        return Err(CtlError::bad_args(usage));
    }
    if args.prefix && args.from_key {
        return Err(CtlError::bad_args(PREFIX_AND_FROM_KEY));
    }
    let (key, range_end) = key_range(key, bytes(&args.range_end), args.prefix, args.from_key)?;
    Ok(DeleteRangeRequest {
        key,
        range_end,
        prev_kv: args.prev_kv,
    })
}

pub async fn put(ctx: &Ctx, args: &PutArgs) -> Result<Output, CtlError> {
    let request = put_request(args, ValueSource::Stdin(&mut std::io::stdin()))?;
    let response = ctx.connect().await?.put(request).await?;
    let mut out = Output::default();
    ctx.printer.put(&mut out, &response)?;
    Ok(out)
}

pub async fn get(ctx: &Ctx, args: &GetArgs) -> Result<Output, CtlError> {
    let request = range_request(args)?;
    let format = ctx.printer.format;
    if args.count_only && !matches!(format, Format::Fields | Format::Json | Format::Protobuf) {
        return Err(CtlError::bad_args(
            "--count-only is only for `--write-out=fields` (or json)",
        ));
    }
    if args.print_value_only && format != Format::Simple {
        return Err(CtlError::bad_args(
            "print-value-only is only for `--write-out=simple`",
        ));
    }
    let response = ctx.connect().await?.range(request).await?;
    let mut printer = ctx.printer;
    printer.value_only = args.print_value_only;
    let mut out = Output::default();
    printer.get(&mut out, &response)?;
    Ok(out)
}

pub async fn del(ctx: &Ctx, args: &DelArgs) -> Result<Output, CtlError> {
    let request = delete_request(args)?;
    let response = ctx.connect().await?.delete_range(request).await?;
    let mut out = Output::default();
    ctx.printer.del(&mut out, &response)?;
    Ok(out)
}

pub async fn compaction(ctx: &Ctx, args: &CompactionArgs) -> Result<Output, CtlError> {
    let [revision] = args.revision.as_slice() else {
        return Err(CtlError::bad_args("compaction command needs 1 argument"));
    };
    let revision: i64 = revision.parse().map_err(|_| {
        CtlError::failed(format!(
            "strconv.ParseInt: parsing {}: invalid syntax",
            crate::go_value_format::quote(revision.as_bytes())
        ))
    })?;
    let request = CompactionRequest {
        revision,
        physical: args.physical,
    };
    ctx.connect().await?.compact(request).await?;
    let mut out = Output::default();
    out.stdout
        .extend(format!("compacted revision {revision}\n").as_bytes());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get_args(key: &str) -> GetArgs {
        GetArgs {
            key: Some(key.into()),
            consistency: "l".into(),
            ..Default::default()
        }
    }

    #[test]
    fn prefix_and_from_key_follow_clientv3() {
        let mut args = get_args("a/");
        args.prefix = true;
        let request = range_request(&args).unwrap();
        assert_eq!((request.key, request.range_end), (b"a/".to_vec(), b"a0".to_vec()));
        let mut args = get_args("");
        args.prefix = true;
        let request = range_request(&args).unwrap();
        assert_eq!((request.key, request.range_end), (vec![0], vec![0]));
        let mut args = get_args("k");
        args.from_key = true;
        let request = range_request(&args).unwrap();
        assert_eq!((request.key, request.range_end), (b"k".to_vec(), vec![0]));
    }

    #[test]
    fn sorting_by_key_ascending_sends_no_order() {
        let mut args = get_args("a");
        args.order = "ascend".into();
        let request = range_request(&args).unwrap();
        assert_eq!(request.sort_order, SortOrder::None as i32);
        args.sort_by = "value".into();
        let request = range_request(&args).unwrap();
        assert_eq!(request.sort_order, SortOrder::Ascend as i32);
        assert_eq!(request.sort_target, SortTarget::Value as i32);
        args.sort_by = "bogus".into();
        assert_eq!(range_request(&args).unwrap_err().code, 4);
    }

    #[test]
    fn bad_arguments_exit_128_as_etcdctl_does() {
        let mut args = get_args("a");
        args.prefix = true;
        args.from_key = true;
        assert_eq!(range_request(&args).unwrap_err().code, 128);
        let put = PutArgs {
            key: Some("k".into()),
            value: Some("v".into()),
            ignore_value: true,
            lease: "0".into(),
            ..Default::default()
        };
        assert_eq!(put_request(&put, ValueSource::Absent).unwrap_err().code, 128);
    }
}
