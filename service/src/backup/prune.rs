//! Retention: which completed backups `prune` deletes. Pure: the clock is passed in.

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use super::db::BackupRecord;

/// What to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep the newest N completed backups.
    pub keep: Option<u32>,
    /// Keep completed backups younger than this.
    pub older_than: Option<TimeDelta>,
}

/// The completed backups to delete under `retention`.
///
/// Rules: only `completed` backups are candidates (running, failed and pruned
/// ones are left alone); the newest completed backup is never deleted; with
/// both limits a backup goes only when it is beyond the newest `keep` *and*
/// older than `older_than` (each limit protects what it covers). A backup's
/// age counts from when it finished (or started, if it has no finish time).
pub fn plan(records: &[BackupRecord], retention: Retention, now: DateTime<Utc>) -> Vec<Uuid> {
    let mut completed: Vec<&BackupRecord> =
        records.iter().filter(|r| r.status == "completed").collect();
    completed.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(a.id.cmp(&b.id)));
    if retention.keep.is_none() && retention.older_than.is_none() {
        return Vec::new();
    }
    completed
        .iter()
        .enumerate()
        .filter(|(rank, r)| {
            if *rank == 0 {
                return false;
            }
            let beyond_keep = retention.keep.is_none_or(|n| *rank >= n as usize);
            let old = retention.older_than.is_none_or(|age| {
                let at = r.finished_at.unwrap_or(r.started_at);
                at < now - age
            });
            beyond_keep && old
        })
        .map(|(_, r)| r.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(days_ago: i64, status: &str, now: DateTime<Utc>) -> BackupRecord {
        let at = now - TimeDelta::days(days_ago);
        BackupRecord {
            id: Uuid::new_v4(),
            location: format!("file:///b/{days_ago}.rkb"),
            status: status.into(),
            source: "etcd".into(),
            requested_by: "test".into(),
            started_at: at,
            finished_at: Some(at + TimeDelta::seconds(5)),
            size_bytes: Some(1),
            sha256: None,
            plaintext_bytes: Some(1),
            kek_id: "0011223344556677".into(),
            chunk_size: 1024,
            etcd_revision: Some(1),
            error: None,
            pruned_at: None,
            encryption_keys: None,
        }
    }

    #[test]
    fn keep_n_deletes_the_oldest_completed() {
        let now = Utc::now();
        let rs: Vec<_> = (0..5).map(|d| rec(d, "completed", now)).collect();
        let del = plan(
            &rs,
            Retention {
                keep: Some(2),
                older_than: None,
            },
            now,
        );
        assert_eq!(del, vec![rs[2].id, rs[3].id, rs[4].id]);
    }

    #[test]
    fn only_completed_backups_are_candidates_and_count() {
        let now = Utc::now();
        let rs = vec![
            rec(0, "failed", now),
            rec(1, "completed", now),
            rec(2, "running", now),
            rec(3, "completed", now),
            rec(4, "pruned", now),
            rec(5, "completed", now),
        ];
        let del = plan(
            &rs,
            Retention {
                keep: Some(1),
                older_than: None,
            },
            now,
        );
        assert_eq!(del, vec![rs[3].id, rs[5].id]);
    }

    #[test]
    fn older_than_never_deletes_the_newest_and_combines_with_keep() {
        let now = Utc::now();
        let rs: Vec<_> = [10, 20, 30]
            .iter()
            .map(|d| rec(*d, "completed", now))
            .collect();
        let week = TimeDelta::days(7);
        let only_age = Retention {
            keep: None,
            older_than: Some(week),
        };
        assert_eq!(plan(&rs, only_age, now), vec![rs[1].id, rs[2].id]);
        let both = Retention {
            keep: Some(2),
            older_than: Some(week),
        };
        assert_eq!(plan(&rs, both, now), vec![rs[2].id]);
        let young = Retention {
            keep: Some(1),
            older_than: Some(TimeDelta::days(25)),
        };
        assert_eq!(plan(&rs, young, now), vec![rs[2].id]);
        assert!(plan(&rs, Retention::default(), now).is_empty());
        assert!(plan(&[], only_age, now).is_empty());
    }
}
