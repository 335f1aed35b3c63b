//! `member add`, `member remove`, `member update` and `member promote`:
//! etcdctl 3.4's argument checks and messages, the change through the
//! cluster's leader, and etcdctl's printouts (`member add` prints the
//! settings that start the new member).

use clap::Args;

use super::Ctx;
use crate::error::CtlError;
use crate::go_bool::GoBoolFlag;
use crate::go_value_format::quote;
use crate::output::{MemberChange, MemberChangeResponse, Output};

#[derive(Args, Debug, Clone)]
pub struct MemberAddArgs {
    /// The new member's name.
    #[arg(value_name = "memberName")]
    pub args: Vec<String>,
    /// comma separated peer URLs for the new member.
    #[arg(long = "peer-urls", default_value = "")]
    pub peer_urls: String,
    /// indicates if the new member is raft learner
    #[arg(long, go_bool_default = false)]
    pub learner: bool,
}

#[derive(Args, Debug, Clone)]
pub struct MemberIdArgs {
    /// The member's ID in hex (as `member list` prints it).
    #[arg(value_name = "memberID")]
    pub args: Vec<String>,
}

#[derive(Args, Debug, Clone)]
pub struct MemberUpdateArgs {
    /// The member's ID in hex (as `member list` prints it).
    #[arg(value_name = "memberID")]
    pub args: Vec<String>,
    /// comma separated peer URLs for the updated member.
    #[arg(long = "peer-urls", default_value = "")]
    pub peer_urls: String,
}

pub async fn add(ctx: &Ctx, args: &MemberAddArgs) -> Result<Output, CtlError> {
    let name = match args.args.as_slice() {
        [] => return Err(CtlError::bad_args("member name not provided")),
        [name] => name,
        many => {
            let mut message = "too many arguments".to_string();
            for arg in many {
                if arg.to_lowercase().starts_with("http") {
                    message.push_str(&format!(", did you mean --peer-urls={arg}"));
                }
            }
            return Err(CtlError::bad_args(message));
        }
    };
    let peer_urls = checked_peer_urls(&args.peer_urls)?;
    let response = ctx.connect().await?.member_add(peer_urls, args.learner).await?;
    let mut out = Output::default();
    ctx.printer.member_add(&mut out, &response, name)?;
    Ok(out)
}

pub async fn remove(ctx: &Ctx, args: &MemberIdArgs) -> Result<Output, CtlError> {
    let id = member_id_arg(&args.args)?;
    let response = ctx.connect().await?.member_remove(id).await?;
    print_change(ctx, id, MemberChangeResponse::Removed(&response))
}

pub async fn update(ctx: &Ctx, args: &MemberUpdateArgs) -> Result<Output, CtlError> {
    let id = member_id_arg(&args.args)?;
    let peer_urls = checked_peer_urls(&args.peer_urls)?;
    let response = ctx.connect().await?.member_update(id, peer_urls).await?;
    print_change(ctx, id, MemberChangeResponse::Updated(&response))
}

pub async fn promote(ctx: &Ctx, args: &MemberIdArgs) -> Result<Output, CtlError> {
    let id = member_id_arg(&args.args)?;
    let response = ctx.connect().await?.member_promote(id).await?;
    print_change(ctx, id, MemberChangeResponse::Promoted(&response))
}

fn print_change(ctx: &Ctx, id: u64, response: MemberChangeResponse<'_>) -> Result<Output, CtlError> {
    let mut out = Output::default();
    ctx.printer
        .member_change(&mut out, &MemberChange { id, response })?;
    Ok(out)
}

/// The one member ID argument, in hex.
fn member_id_arg(args: &[String]) -> Result<u64, CtlError> {
    let [id] = args else {
        return Err(CtlError::bad_args("member ID is not provided"));
    };
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CtlError::bad_args(format!(
            "bad member ID arg (strconv.ParseUint: parsing {}: invalid syntax), expecting ID in Hex",
            quote(id.as_bytes())
        )));
    }
    u64::from_str_radix(id, 16).map_err(|_| {
        CtlError::bad_args(format!(
            "bad member ID arg (strconv.ParseUint: parsing {}: value out of range), expecting ID in Hex",
            quote(id.as_bytes())
        ))
    })
}

/// `--peer-urls` split at commas, checked (etcd's rule for member URLs)
/// and sorted, as etcdctl's `types.NewURLs` does.
fn checked_peer_urls(flag: &str) -> Result<Vec<String>, CtlError> {
    if flag.is_empty() {
        return Err(CtlError::bad_args("member peer urls not provided"));
    }
    let mut urls = Vec::new();
    for url in flag.split(',') {
        keel_api::member_urls::check_member_url(url)
            .map_err(|refused| CtlError::failed(refused.to_string()))?;
        urls.push(url.to_string());
    }
    urls.sort();
    Ok(urls)
}
