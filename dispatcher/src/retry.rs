//! When to try again after a transient failure.

use std::time::Duration;

use herald_shared::config::RetrySchedule;
use rand::Rng;

/// The wait before retry number `retry` (1-based): the schedule's step, jittered ±25 % so that
/// jobs failing together do not return together, and never sooner than Teams' `Retry-After`.
pub fn backoff(schedule: &RetrySchedule, retry: u32, retry_after: Option<Duration>) -> Duration {
    let nominal = schedule.nominal(retry);
    let jittered = nominal.mul_f64(rand::thread_rng().gen_range(0.75..=1.25));
    retry_after.map_or(jittered, |floor| jittered.max(floor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_around_the_schedule_and_honours_retry_after() {
        let schedule: RetrySchedule = "4s,40s".parse().unwrap();
        for _ in 0..100 {
            let first = backoff(&schedule, 1, None);
            assert!(
                first >= Duration::from_secs(3) && first <= Duration::from_secs(5),
                "{first:?}"
            );
            let later = backoff(&schedule, 7, None);
            assert!(
                later >= Duration::from_secs(30) && later <= Duration::from_secs(50),
                "{later:?}"
            );
            assert!(
                backoff(&schedule, 1, Some(Duration::from_secs(60))) >= Duration::from_secs(60)
            );
        }
    }
}
