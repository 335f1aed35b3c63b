//! `txn`: reads the compares and the success and failure requests from
//! stdin in etcdctl's syntax (see `txn_parse`), printing etcdctl's prompts
//! with `-i/--interactive`, then commits the transaction.

use std::io::BufRead;

use clap::Args;
use keel_api::etcdserverpb::TxnRequest;

use super::Ctx;
use crate::error::CtlError;
use crate::go_bool::GoBoolFlag;
use crate::output::Output;
use crate::txn_parse::{parse_compare, parse_request, read_section, Section};

#[derive(Args, Debug, Clone)]
pub struct TxnArgs {
    /// Input the transaction in interactive mode (prints a prompt before each section).
    #[arg(short = 'i', long, go_bool_default = false)]
    pub interactive: bool,
    #[arg(hide = true)]
    pub extra: Vec<String>,
}

/// Reads a whole txn from `input`; prompts (with `-i`) go to `prompts`.
pub fn read_txn(
    input: &mut dyn BufRead,
    interactive: bool,
    prompt: &mut dyn FnMut(&str),
) -> Result<TxnRequest, CtlError> {
    let mut request = TxnRequest::default();
    for section in [Section::Compares, Section::Success, Section::Failure] {
        if interactive {
            prompt(section.prompt());
        }
        let mut each = |line: &str| {
            match section {
                Section::Compares => request.compare.push(parse_compare(line)?),
                Section::Success => request.success.push(parse_request(line)?),
                Section::Failure => request.failure.push(parse_request(line)?),
            }
            Ok(())
        };
        read_section(input, &section, &mut each)?;
    }
    Ok(request)
}

pub async fn txn(ctx: &Ctx, args: &TxnArgs) -> Result<Output, CtlError> {
    if !args.extra.is_empty() {
        return Err(CtlError::bad_args("txn command does not accept argument"));
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut prompt = |text: &str| println!("{text}");
    let request = read_txn(&mut input, args.interactive, &mut prompt)?;
    let response = ctx.connect().await?.txn(request).await?;
    let mut out = Output::default();
    ctx.printer.txn(&mut out, &response)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_txn_reads_three_sections_and_prompts_when_interactive() {
        let text = "mod(\"k\") > \"0\"\n\nput k v\nget k\n\ndel k\n\n";
        let mut prompts = Vec::new();
        let mut input = text.as_bytes();
        let request = read_txn(&mut input, true, &mut |p| prompts.push(p.to_string())).unwrap();
        assert_eq!(
            (
                request.compare.len(),
                request.success.len(),
                request.failure.len()
            ),
            (1, 2, 1)
        );
        assert_eq!(prompts.len(), 3);
        assert_eq!(prompts[1], "success requests (get, put, del):");
    }

    #[test]
    fn an_empty_txn_is_three_empty_lines() {
        let mut input: &[u8] = b"\n\n\n";
        let request = read_txn(&mut input, false, &mut |_| {}).unwrap();
        assert!(request.compare.is_empty() && request.success.is_empty());
    }
}
