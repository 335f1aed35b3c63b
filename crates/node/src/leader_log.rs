//! Tells the operator, through the member's log, what Raft is doing: this
//! member won an election, stepped down, or follows a new leader; snapshots
//! are logged where they are built and installed. It also counts the
//! leader changes the member sees (`etcd_server_leader_changes_seen_total`).

use keel_raft::KeelRaft;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::ServerState;

pub async fn log_leadership_changes(raft: KeelRaft, member_name: String) {
    // The server metrics: they change with state, vote and leader only, not
    // with every write as the full metrics do.
    let mut metrics = raft.server_metrics();
    let mut last_state = ServerState::Learner;
    let mut last_leader: Option<u64> = None;
    loop {
        let (state, leader, term, id) = {
            let m = metrics.borrow_and_update();
            (m.state, m.current_leader, m.vote.leader_id().term, m.id)
        };
        if state == ServerState::Leader && last_state != ServerState::Leader {
            tracing::info!(member = %member_name, term, "elected leader");
        } else if state != ServerState::Leader && last_state == ServerState::Leader {
            tracing::info!(member = %member_name, term, "stepped down as leader");
        }
        if leader != last_leader && leader != Some(id) {
            match leader {
                Some(leader) => {
                    tracing::info!(member = %member_name, term, leader = %format!("{leader:x}"), "following leader")
                }
                None => tracing::info!(member = %member_name, term, "lost the leader"),
            }
        }
        if leader.is_some() && leader != last_leader {
            keel_metrics::metrics().leader_changes_seen.inc();
        }
        last_state = state;
        last_leader = leader;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
