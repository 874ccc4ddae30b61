//! The one retry owner. Adapters make single attempts; a run's step retries a failed call here,
//! with jittered exponential backoff that honours the provider's `retry-after`, and only for
//! errors that can succeed on another try. Nothing else in Steward retries an outside call.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};
use steward_adapters::llm::LlmError;
use steward_adapters::servicenow::ServiceNowError;
use steward_adapters::slack::SlackError;

/// An error that knows whether another attempt may succeed.
pub trait Transient: std::fmt::Display {
    fn is_retryable(&self) -> bool;
    /// The wait the other side asked for, if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
}

impl Transient for LlmError {
    fn is_retryable(&self) -> bool {
        LlmError::is_retryable(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        LlmError::retry_after(self)
    }
}

impl Transient for ServiceNowError {
    fn is_retryable(&self) -> bool {
        ServiceNowError::is_retryable(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            ServiceNowError::RateLimited {
                retry_after_secs: Some(s),
                ..
            } => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }
}

impl Transient for SlackError {
    fn is_retryable(&self) -> bool {
        SlackError::is_retryable(self)
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            SlackError::RateLimited {
                retry_after_secs: Some(s),
            } => Some(Duration::from_secs(*s)),
            _ => None,
        }
    }
}

/// A failed call to an adapter actor.
#[derive(Debug, thiserror::Error)]
pub enum CallError<E> {
    #[error("{0}")]
    Adapter(E),
    #[error("the adapter did not answer: {0}")]
    Unavailable(String),
}

impl<E: Transient> Transient for CallError<E> {
    fn is_retryable(&self) -> bool {
        match self {
            CallError::Adapter(e) => e.is_retryable(),
            CallError::Unavailable(_) => true,
        }
    }
    fn retry_after(&self) -> Option<Duration> {
        match self {
            CallError::Adapter(e) => e.retry_after(),
            CallError::Unavailable(_) => None,
        }
    }
}

/// How a step retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub attempts: usize,
    pub min_delay: Duration,
    pub max_delay: Duration,
    /// A `retry-after` longer than this is not waited for in the step: the step fails and says
    /// how long the provider asked to wait.
    pub max_wait: Duration,
    /// How long one call may take before it counts as failed.
    pub call_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_wait: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
        }
    }
}

/// Sends one request to an adapter actor and waits for its answer.
pub async fn call<M, T, E>(
    actor: &ActorRef<M>,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<Result<T, E>>) -> M,
) -> Result<T, CallError<E>>
where
    M: Message,
    T: Send + 'static,
    E: Send + 'static,
{
    match actor.call(build, Some(timeout)).await {
        Ok(CallResult::Success(Ok(value))) => Ok(value),
        Ok(CallResult::Success(Err(error))) => Err(CallError::Adapter(error)),
        Ok(CallResult::Timeout) => Err(CallError::Unavailable(format!("no answer in {timeout:?}"))),
        Ok(CallResult::SenderError) => Err(CallError::Unavailable("the call was dropped".into())),
        Err(error) => Err(CallError::Unavailable(error.to_string())),
    }
}

/// Runs `op` until it succeeds, fails with an error that is not transient, or the policy's
/// attempts are spent. Returns the result and the number of attempts made.
pub async fn retrying<T, E, F, Fut>(policy: &RetryPolicy, mut op: F) -> (Result<T, E>, u32)
where
    E: Transient,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let attempts = std::sync::atomic::AtomicU32::new(0);
    let backoff = ExponentialBuilder::default()
        .with_min_delay(policy.min_delay)
        .with_max_delay(policy.max_delay)
        .with_max_times(policy.attempts.saturating_sub(1))
        .with_jitter();
    let max_wait = policy.max_wait;
    let result = (|| {
        attempts.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        op()
    })
    .retry(backoff)
    .when(|e: &E| e.is_retryable() && e.retry_after().is_none_or(|w| w <= max_wait))
    .adjust(|e: &E, planned| planned.map(|d| e.retry_after().map_or(d, |w| w.max(d))))
    .await;
    (result, attempts.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Flaky {
        retryable: bool,
        wait: Option<Duration>,
    }

    impl std::fmt::Display for Flaky {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("flaky")
        }
    }

    impl Transient for Flaky {
        fn is_retryable(&self) -> bool {
            self.retryable
        }
        fn retry_after(&self) -> Option<Duration> {
            self.wait
        }
    }

    fn fast() -> RetryPolicy {
        RetryPolicy {
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            ..RetryPolicy::default()
        }
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_bound() {
        let (result, attempts) = retrying(&fast(), || async {
            Err::<(), _>(Flaky {
                retryable: true,
                wait: None,
            })
        })
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 3);
    }

    #[tokio::test]
    async fn client_errors_are_not_retried() {
        let (_, attempts) = retrying(&fast(), || async {
            Err::<(), _>(Flaky {
                retryable: false,
                wait: None,
            })
        })
        .await;
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn a_long_retry_after_stops_retrying_at_once() {
        let wait = Some(Duration::from_secs(2400));
        let (_, attempts) = retrying(&fast(), || async {
            Err::<(), _>(Flaky {
                retryable: true,
                wait,
            })
        })
        .await;
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn success_after_a_failure_counts_both_attempts() {
        let mut n = 0;
        let (result, attempts) = retrying(&fast(), || {
            n += 1;
            let fail = n == 1;
            async move {
                if fail {
                    Err(Flaky {
                        retryable: true,
                        wait: None,
                    })
                } else {
                    Ok(7)
                }
            }
        })
        .await;
        assert_eq!(result.unwrap(), 7);
        assert_eq!(attempts, 2);
    }
}
