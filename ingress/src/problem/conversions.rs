//! The errors the handlers meet, as problems, so that a handler says `?` and the status each
//! error gets is decided here, once. Conflicts whose answer depends on how the request named
//! the job (409 or 422) are decided by the handler itself.
//!
//! A server error's detail is the error with its causes ([`Chain`]), and the error rides
//! along as the problem's cause for the request log.

use herald_shared::{
    amqp::PublishError, error::Chain, job::JobError, store::StoreError, submit::SubmitError,
    timers::QueueError,
};

use super::Problem;
use crate::bot::{RecordError, activity::ActivityError, auth::AuthError};

/// 503: ours, not the caller's; retrying later can succeed.
fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> Problem {
    Problem::unavailable(Chain(&error).to_string()).caused_by(error)
}

/// Redis could not answer: 503.
impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        unavailable(error)
    }
}

/// RabbitMQ could not take the message: 503.
impl From<PublishError> for Problem {
    fn from(error: PublishError) -> Self {
        unavailable(error)
    }
}

/// Neither Redis nor RabbitMQ took a message for the dispatcher: 503.
impl From<QueueError> for Problem {
    fn from(error: QueueError) -> Self {
        unavailable(error)
    }
}

/// The status record or the publish failed: 503. A conflict is a 409 naming the job.
impl From<SubmitError> for Problem {
    fn from(error: SubmitError) -> Self {
        match error {
            SubmitError::Conflict(existing) => Problem::conflict(format!(
                "job {} exists with a different request",
                existing.id
            )),
            other => unavailable(other),
        }
    }
}

/// A job or message that breaks the contract: 400 naming the field.
impl From<JobError> for Problem {
    fn from(error: JobError) -> Self {
        match error {
            JobError::Invalid { field, reason } => {
                Problem::bad_request(format!("{field}: {reason}"))
            }
            JobError::Malformed(reason) => Problem::bad_request(reason),
        }
    }
}

/// A bad token is 401; Teams' keys out of reach is 503, so that Teams retries.
impl From<AuthError> for Problem {
    fn from(error: AuthError) -> Self {
        if error.is_unavailable() {
            unavailable(error)
        } else {
            Problem::unauthorized(error.to_string())
        }
    }
}

/// A body that is not an activity: 400.
impl From<ActivityError> for Problem {
    fn from(error: ActivityError) -> Self {
        Problem::bad_request(Chain(&error).to_string())
    }
}

/// The activity could not be stored, or its greeting queued: 503, so that Teams retries.
impl From<RecordError> for Problem {
    fn from(error: RecordError) -> Self {
        unavailable(error)
    }
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;
    use crate::problem::ProblemCause;

    #[test]
    fn server_errors_answer_503_with_their_causes_and_keep_the_error_for_the_log() {
        let problem = Problem::from(SubmitError::Queue(PublishError::Unavailable.into()));
        assert_eq!(problem.status, 503);
        assert_eq!(
            problem.detail,
            "the job could not be queued: RabbitMQ is unavailable"
        );
        let body = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            body.as_object().unwrap().keys().collect::<Vec<_>>(),
            ["detail", "status", "title", "type"],
            "the cause is never sent"
        );
        let response = problem.into_response();
        assert_eq!(response.headers()["retry-after"], "1");
        let cause = response.extensions().get::<ProblemCause>().unwrap();
        assert_eq!(
            Chain(cause.error()).to_string(),
            "the job could not be queued: RabbitMQ is unavailable"
        );

        let malformed = StoreError::Malformed {
            key: "k".into(),
            reason: "not JSON".into(),
        };
        assert_eq!(
            Problem::from(SubmitError::Store(malformed)).detail,
            "the job's status could not be stored: stored record k is malformed: not JSON"
        );
        let keys = Problem::from(AuthError::KeysUnavailable("timed out".into()));
        assert_eq!(keys.status, 503);
        assert!(keys.cause().is_some());
    }

    #[test]
    fn client_errors_name_what_was_wrong_and_carry_no_cause() {
        let invalid = Problem::from(JobError::Invalid {
            field: "to.user.tenantId",
            reason: "is empty".into(),
        });
        assert_eq!(
            (invalid.status, invalid.detail.as_str()),
            (400, "to.user.tenantId: is empty")
        );
        let token = Problem::from(AuthError::MissingToken);
        assert_eq!(token.status, 401);
        assert!(token.cause().is_none());
        let activity = Problem::from(ActivityError::from(
            serde_json::from_str::<serde_json::Value>("{").unwrap_err(),
        ));
        assert_eq!(activity.status, 400);
        assert!(
            activity
                .detail
                .starts_with("the body is not a valid activity: EOF"),
            "{}",
            activity.detail
        );
    }
}
