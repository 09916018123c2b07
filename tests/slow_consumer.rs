//! A client that stops reading must not stall a worker (issue #11, defect
//! 3). A separate process subscribed to everything under `t/` is stopped
//! with SIGSTOP and its link congested (tests/common/stall.rs explains how);
//! then a generation runs on the single worker that also serves a camera
//! pipeline. Outcomes, not latencies: every camera frame sent meanwhile is
//! served with a prediction, as the daemon counts it (none expires in its
//! 2 s budget), and the
//! generation either completes or ends with `slow_consumer`, its token
//! sequence numbers contiguous up to the final message.

mod common;

use std::time::Duration;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_neither_stalls_the_worker_nor_loses_tokens_silently() {
    let (daemon, port) = start(&stall::config()).await;
    let run = stall::run(&daemon, port, 32).await;

    assert!(
        run.camera_errors.is_empty() && run.camera_ok == run.camera_sent as u64,
        "{} of {} camera frames sent during the generation were not served \
         (budget {} ms) while a reader of the token stream was stopped: the worker \
         blocked on it; outcomes {:?}",
        run.camera_sent as u64 - run.camera_ok,
        run.camera_sent,
        stall::CAMERA_DEADLINE_MS,
        run.camera_errors
    );

    for (i, t) in run.tokens.iter().enumerate() {
        assert_eq!(t["seq"], i, "token seqs are contiguous: {:?}", run.tokens);
    }
    let fin = &run.fin;
    match fin["finish_reason"].as_str() {
        Some("stop" | "length") => {
            assert_eq!(
                fin["usage"]["completion_tokens"],
                run.tokens.len(),
                "every token arrived: {fin}"
            );
            let text: String = run
                .tokens
                .iter()
                .map(|t| t["text"].as_str().unwrap())
                .collect();
            assert_eq!(text, fin["text"].as_str().unwrap());
        }
        Some("error") => {
            assert_eq!(fin["error"]["code"], "slow_consumer", "{fin}");
        }
        other => panic!("unexpected ending {other:?}: {fin}"),
    }
    assert!(run.camera_sent >= 5, "frames overlapped the generation");
    daemon.shutdown(Duration::from_secs(5)).await;
}
