//! The proof-of-play queue and the play ledger, across restarts.

mod common;

use chrono::{Duration, Utc};
use loa_protocol::{PlayOutcome, PlayReport};
use loa_receiver::ledger::Ledger;
use loa_receiver::reports::{ReportQueue, report_id_for};

fn report(event: &str) -> PlayReport {
    let at = Utc::now();
    PlayReport {
        report_id: report_id_for("thon-1", event),
        receiver_id: "thon-1".into(),
        event_id: event.into(),
        programme_id: "bulletin".into(),
        schedule_id: "s1".into(),
        scheduled_at: at,
        started_at: Some(at),
        ended_at: Some(at + Duration::seconds(60)),
        outcome: PlayOutcome::Completed,
        detail: None,
        interruptions: Vec::new(),
    }
}

#[test]
fn reports_survive_restarts_and_are_deleted_only_when_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let a = report("s1@1000");
    let b = report("s1@2000");
    {
        let queue = ReportQueue::open(dir.path()).unwrap();
        queue.enqueue(&a).unwrap();
        queue.enqueue(&b).unwrap();
        assert!(
            dir.path()
                .join("reports")
                .join(format!("{}.json", a.report_id))
                .exists()
        );
    }
    // Restart: both are still there.
    let queue = ReportQueue::open(dir.path()).unwrap();
    assert_eq!(queue.len(), 2);
    assert!(queue.contains(&a.report_id) && queue.contains(&b.report_id));
    assert_eq!(
        queue.pending().iter().find(|r| r.report_id == a.report_id),
        Some(&a)
    );

    // Acks for unknown or hostile ids change nothing.
    assert_eq!(
        queue
            .ack(&["nope".into(), "../../schedule".into()])
            .unwrap(),
        0
    );
    assert_eq!(queue.len(), 2);

    assert_eq!(queue.ack(std::slice::from_ref(&a.report_id)).unwrap(), 1);
    assert!(
        !dir.path()
            .join("reports")
            .join(format!("{}.json", a.report_id))
            .exists()
    );
    drop(queue);

    let queue = ReportQueue::open(dir.path()).unwrap();
    assert_eq!(queue.pending(), vec![b.clone()]);
    assert_eq!(queue.ack(std::slice::from_ref(&b.report_id)).unwrap(), 1);
    assert!(queue.is_empty());
}

#[test]
fn half_written_and_unreadable_report_files_do_not_block_the_queue() {
    let dir = tempfile::tempdir().unwrap();
    let reports = dir.path().join("reports");
    std::fs::create_dir_all(&reports).unwrap();
    std::fs::write(reports.join(".abc.json.x1y2.tmp"), b"{\"report_id\":").unwrap();
    std::fs::write(reports.join("0123456789abcdef.json"), b"garbage").unwrap();
    let queue = ReportQueue::open(dir.path()).unwrap();
    assert!(queue.is_empty());
    assert!(!reports.join(".abc.json.x1y2.tmp").exists());
    assert!(reports.join("0123456789abcdef.json.rejected").exists());
    queue.enqueue(&report("s1@1")).unwrap();
    assert_eq!(ReportQueue::open(dir.path()).unwrap().len(), 1);
}

#[test]
fn report_ids_are_stable_per_receiver_and_event() {
    assert_eq!(
        report_id_for("thon-1", "s1@5"),
        report_id_for("thon-1", "s1@5")
    );
    assert_ne!(
        report_id_for("thon-1", "s1@5"),
        report_id_for("thon-2", "s1@5")
    );
    assert_ne!(
        report_id_for("thon-1", "s1@5"),
        report_id_for("thon-1", "s1@6")
    );
    assert!(loa_protocol::is_valid_id(&report_id_for("thon-1", "s1@5")));
}

#[test]
fn the_ledger_remembers_plays_and_turns_an_interrupted_one_into_a_failed_report() {
    let dir = tempfile::tempdir().unwrap();
    let end = Utc::now() + Duration::seconds(60);
    let mut started = report("s1@1000");
    started.ended_at = None;
    {
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger.mark_finished("s1@500", end).unwrap();
        ledger.mark_started(&started, end).unwrap();
        // Killed here, mid-play.
    }
    let mut ledger = Ledger::open(dir.path()).unwrap();
    assert!(ledger.contains("s1@500") && ledger.contains("s1@1000"));
    let failed = ledger
        .interrupted_play()
        .expect("the interrupted play is remembered");
    assert_eq!(failed.outcome, PlayOutcome::Failed);
    assert_eq!(failed.report_id, started.report_id);
    assert_eq!(failed.started_at, started.started_at);
    assert!(failed.detail.unwrap().contains("stopped during the play"));
    ledger.mark_finished("s1@1000", end).unwrap();
    assert!(
        Ledger::open(dir.path())
            .unwrap()
            .interrupted_play()
            .is_none()
    );

    // Pruning forgets only old events that left the schedule.
    let old = Utc::now() - Duration::days(3);
    ledger.mark_finished("gone@1", old).unwrap();
    ledger.mark_finished("kept@1", old).unwrap();
    ledger
        .prune(&["kept@1"].into_iter().collect(), Utc::now())
        .unwrap();
    let ledger = Ledger::open(dir.path()).unwrap();
    assert!(!ledger.contains("gone@1"));
    assert!(ledger.contains("kept@1") && ledger.contains("s1@500"));
}

#[test]
fn a_play_cut_short_with_time_left_is_taken_back_to_be_joined_again() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc::now();
    let mut started = report("s1@2000");
    started.ended_at = None;
    {
        let mut ledger = Ledger::open(dir.path()).unwrap();
        ledger
            .mark_started(&started, now + Duration::seconds(30))
            .unwrap();
        // Killed here, 30 s before the programme's end.
    }
    let mut ledger = Ledger::open(dir.path()).unwrap();
    let resumed = ledger
        .resume_interrupted_play(now, Duration::seconds(1))
        .unwrap();
    assert_eq!(resumed.as_deref(), Some("s1@2000"));
    // Forgotten, on disk too: the player will play (join) it and report it once.
    let ledger = Ledger::open(dir.path()).unwrap();
    assert!(!ledger.contains("s1@2000"));
    assert!(ledger.interrupted_play().is_none());

    // A play whose end has (almost) passed stays a failed report.
    let mut over = report("s1@3000");
    over.ended_at = None;
    let mut ledger = Ledger::open(dir.path()).unwrap();
    ledger
        .mark_started(&over, now + Duration::milliseconds(500))
        .unwrap();
    assert_eq!(
        ledger
            .resume_interrupted_play(now, Duration::seconds(1))
            .unwrap(),
        None
    );
    assert!(ledger.contains("s1@3000"));
    assert_eq!(
        ledger.interrupted_play().map(|r| r.outcome),
        Some(PlayOutcome::Failed)
    );
}
