//! `alarm list` and `alarm disarm`, as etcdctl 3.4 runs them: disarm lists
//! the raised alarms, then clears each one (clientv3's `AlarmDisarm` with
//! no member and no type), and prints the alarms it cleared, without a
//! header.

use clap::Subcommand;
use keel_api::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmResponse, AlarmType};

use super::Ctx;
use crate::error::CtlError;
use crate::output::Output;

#[derive(Subcommand, Debug, Clone)]
pub enum AlarmCommand {
    /// Lists all alarms.
    ///
    /// Example: keelctl alarm list
    List {
        #[arg(hide = true)]
        extra: Vec<String>,
    },
    /// Disarms all alarms.
    ///
    /// Example: keelctl alarm disarm
    Disarm {
        #[arg(hide = true)]
        extra: Vec<String>,
    },
}

fn list_request() -> AlarmRequest {
    AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: AlarmType::None as i32,
    }
}

pub async fn alarm(ctx: &Ctx, command: &AlarmCommand) -> Result<Output, CtlError> {
    let response = match command {
        AlarmCommand::List { extra } => {
            if !extra.is_empty() {
                return Err(CtlError::bad_args("alarm list command accepts no arguments"));
            }
            ctx.connect().await?.alarm(list_request()).await?
        }
        AlarmCommand::Disarm { extra } => {
            if !extra.is_empty() {
                return Err(CtlError::bad_args("alarm disarm command accepts no arguments"));
            }
            let client = ctx.connect().await?;
            let raised = client.alarm(list_request()).await?;
            let mut cleared = AlarmResponse::default();
            for alarm in raised.alarms {
                let answer = client
                    .alarm(AlarmRequest {
                        action: AlarmAction::Deactivate as i32,
                        member_id: alarm.member_id,
                        alarm: alarm.alarm,
                    })
                    .await?;
                cleared.alarms.extend(answer.alarms);
            }
            cleared
        }
    };
    let mut out = Output::default();
    ctx.printer.alarm(&mut out, &response)?;
    Ok(out)
}
