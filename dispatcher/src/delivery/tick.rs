//! A schedule's occurrence is due: its job is queued (its id, UUID v5 of schedule and instant,
//! makes a second handling of the same occurrence queue nothing new), then the timer of the
//! occurrence after is parked, for the same generation. A timer of a schedule since edited,
//! paused or deleted is dropped: the edit parked its own generation's timer, which nothing
//! parked here can replace.

use herald_shared::{schedule::Tick, submit::OnConflict};
use time::OffsetDateTime;

use super::{Handler, Interrupted};

impl Handler {
    pub(super) async fn occur(&self, tick: &Tick) -> Result<(), Interrupted> {
        let store = &self.scheduler.store;
        let schedule = self
            .until_done("read the schedule", || store.get(&tick.schedule))
            .await?;
        let Some(schedule) = schedule else {
            tracing::debug!("the schedule is gone; dropping its timer");
            return Ok(());
        };
        if schedule.generation != tick.generation || schedule.paused {
            tracing::debug!("the schedule changed since this timer was parked; dropping it");
            return Ok(());
        }
        let job = schedule
            .occurrence_job(tick.occurrence)
            .map_err(|e| Interrupted::Broken(format!("rejected: the schedule's job: {e}")))?;
        let now = OffsetDateTime::now_utc();
        // A repeat (this timer handled again after a crash) finds the job and queues nothing.
        self.until_done("queue the occurrence", || {
            self.enqueuer
                .submit(job.clone(), OnConflict::KeepFirst, now)
        })
        .await?;
        self.until_done("note the occurrence", || {
            store.note_occurrence(&schedule.id, &job.id)
        })
        .await?;
        tracing::info!(job_id = %job.id, occurrence = %tick.occurrence, "schedule occurrence queued");

        self.until_done("park the next occurrence", || {
            self.scheduler.park_next(&schedule, tick.occurrence)
        })
        .await?;
        Ok(())
    }
}
