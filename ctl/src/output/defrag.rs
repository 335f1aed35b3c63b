//! What `defrag` prints, whatever `-w` says (etcdctl 3.4 prints these lines
//! itself, in every output format).

use super::Output;

/// "Finished defragmenting etcd member[<endpoint>]" on stdout.
pub fn finished(out: &mut Output, endpoint: &str) {
    out.stdout
        .extend(format!("Finished defragmenting etcd member[{endpoint}]\n").as_bytes());
}

/// "Failed to defragment etcd member[<endpoint>] (<reason>)" on stderr.
pub fn failed(out: &mut Output, endpoint: &str, reason: &str) {
    out.stderr
        .extend(format!("Failed to defragment etcd member[{endpoint}] ({reason})\n").as_bytes());
}

/// etcdctl's line for a failed `--data-dir` defragmentation, with why keel
/// refuses it.
pub fn data_dir_refused(out: &mut Output, data_dir: &str) {
    out.stderr.extend(
        format!(
            "Failed to defragment etcd data[{data_dir}] (keel defragments running members only: \
             omit --data-dir and give the member's endpoint)\n"
        )
        .as_bytes(),
    );
}
