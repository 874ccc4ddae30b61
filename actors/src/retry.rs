//! The one retry owner. Adapters make single attempts; a run's step retries a failed call here,
//! with jittered exponential backoff that honours the provider's `retry-after`, and only for
//! errors that can succeed on another try. Nothing else in Steward retries an outside call.
//!
//! A wait longer than the policy's `max_wait` (an hourly rate limit, say) is not spent in the
//! step: [`park_until`] names the time to park the run until, and the run sleeps on a durable
//! timer without spending its attempts.

use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};
use steward_adapters::llm::LlmError;
use steward_adapters::servicenow::ServiceNowError;
use steward_adapters::slack::SlackError;
use steward_core::Clock;

/// An error that knows whether another attempt may succeed.
pub trait Transient: std::fmt::Display {
    fn is_retryable(&self) -> bool;
    /// The wait the other side asked for, if any.
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// The moment (Unix ms) before which the other side said it will refuse again, if it named
    /// one (a rate-limit window's reset).
    fn retry_at_millis(&self) -> Option<i64> {
        None
    }
}

/// How long to wait before trying again at `now_millis`: the longer of the `retry-after` and
/// the time left until the named reset, if the other side gave either.
pub fn wait_for<E: Transient + ?Sized>(error: &E, now_millis: i64) -> Option<Duration> {
    let until_reset = error
        .retry_at_millis()
        .map(|at| Duration::from_millis(u64::try_from(at.saturating_sub(now_millis)).unwrap_or(0)));
    match (error.retry_after(), until_reset) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
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
    fn retry_at_millis(&self) -> Option<i64> {
        match self {
            ServiceNowError::RateLimited {
                reset_at_secs: Some(s),
                ..
            } => Some(s.saturating_mul(1000)),
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
    fn retry_at_millis(&self) -> Option<i64> {
        match self {
            CallError::Adapter(e) => e.retry_at_millis(),
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
    /// A wait longer than this (a `retry-after`, a rate-limit reset) is not spent in the step:
    /// the run parks until then instead.
    pub max_wait: Duration,
    /// How long one call may take before it counts as failed.
    pub call_timeout: Duration,
    /// The longest wait a run parks for; a step asked to wait longer fails, naming the wait.
    pub max_park: Duration,
    /// How many times in a row a run may park without getting further before the step fails.
    pub max_parks: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 3,
            min_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_wait: Duration::from_secs(30),
            call_timeout: Duration::from_secs(60),
            max_park: Duration::from_secs(6 * 3600),
            max_parks: 5,
        }
    }
}

/// Sends one request to an adapter actor and waits for its answer, counting the call's outcome
/// in `steward_adapter_calls_total` (every adapter call goes through here).
pub async fn call<M, T, E>(
    metrics: &crate::metrics::TenantMetrics,
    actor: &ActorRef<M>,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<Result<T, E>>) -> M,
) -> Result<T, CallError<E>>
where
    M: crate::metrics::AdapterMsg,
    T: Send + 'static,
    E: Send + 'static,
{
    let result = call_once(actor, timeout, build).await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(CallError::Adapter(_)) => "error",
        Err(CallError::Unavailable(_)) => "unavailable",
    };
    metrics.adapter_call(M::ADAPTER, outcome);
    result
}

async fn call_once<M, T, E>(
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

/// Runs `op` until it succeeds, fails with an error that is not transient or that asks for a
/// wait beyond `max_wait` (judged by `clock`), or the policy's attempts are spent. Returns the
/// result and the number of attempts made.
pub async fn retrying<T, E, F, Fut>(
    policy: &RetryPolicy,
    clock: &dyn Clock,
    mut op: F,
) -> (Result<T, E>, u32)
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
    .when(|e: &E| e.is_retryable() && wait_for(e, clock.now_millis()).is_none_or(|w| w <= max_wait))
    .adjust(|e: &E, planned| {
        planned.map(|d| wait_for(e, clock.now_millis()).map_or(d, |w| w.max(d)))
    })
    .await;
    (result, attempts.into_inner())
}

/// When a step that failed with `error` at `now_millis` should be tried again by parking the
/// run: the error is transient and asks for a wait beyond `max_wait` but within `max_park`.
/// None means the failure stands.
pub fn park_until<E: Transient + ?Sized>(
    policy: &RetryPolicy,
    error: &E,
    now_millis: i64,
) -> Option<i64> {
    if !error.is_retryable() {
        return None;
    }
    let wait = wait_for(error, now_millis)?;
    if wait <= policy.max_wait || wait > policy.max_park {
        return None;
    }
    let millis = i64::try_from(wait.as_millis()).ok()?;
    Some(now_millis.saturating_add(millis))
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

    fn clock() -> steward_core::FixedClock {
        steward_core::FixedClock::at_secs(1_700_000_000)
    }

    #[tokio::test]
    async fn transient_errors_are_retried_up_to_the_bound() {
        let (result, attempts) = retrying(&fast(), &clock(), || async {
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
        let (_, attempts) = retrying(&fast(), &clock(), || async {
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
        let (_, attempts) = retrying(&fast(), &clock(), || async {
            Err::<(), _>(Flaky {
                retryable: true,
                wait,
            })
        })
        .await;
        assert_eq!(attempts, 1);
    }

    fn rate_limited(reset_at_secs: Option<i64>, retry_after_secs: Option<u64>) -> ServiceNowError {
        ServiceNowError::RateLimited {
            reset_at_secs,
            retry_after_secs,
            limit: Some("1000".into()),
        }
    }

    #[tokio::test]
    async fn a_rate_limit_reset_far_ahead_stops_retrying_at_once() {
        let clock = clock();
        let reset = clock.now_secs() + 40 * 60;
        let (_, attempts) = retrying(&fast(), &clock, || async {
            Err::<(), _>(rate_limited(Some(reset), None))
        })
        .await;
        assert_eq!(attempts, 1, "no retry is spent on a window 40 minutes away");
    }

    #[test]
    fn the_wait_is_the_longer_of_retry_after_and_the_reset() {
        let now = 1_700_000_000_000;
        let reset = 1_700_000_000 + 2400;
        assert_eq!(
            wait_for(&rate_limited(Some(reset), None), now),
            Some(Duration::from_secs(2400))
        );
        assert_eq!(
            wait_for(&rate_limited(Some(reset), Some(3000)), now),
            Some(Duration::from_secs(3000))
        );
        assert_eq!(
            wait_for(&rate_limited(Some(1_600_000_000), None), now),
            Some(Duration::ZERO),
            "a reset in the past is no wait"
        );
        assert_eq!(wait_for(&rate_limited(None, None), now), None);
        assert_eq!(
            wait_for(&rate_limited(Some(i64::MAX), None), now),
            Some(Duration::from_millis(
                u64::try_from(i64::MAX - now).unwrap()
            )),
            "a hostile reset does not overflow"
        );
    }

    #[test]
    fn a_run_parks_only_for_a_transient_wait_beyond_max_wait_and_within_max_park() {
        let policy = RetryPolicy::default();
        let now = 1_700_000_000_000;
        let reset = 1_700_000_000 + 2400;
        assert_eq!(
            park_until(&policy, &rate_limited(Some(reset), None), now),
            Some(reset * 1000)
        );
        let short = Flaky {
            retryable: true,
            wait: Some(Duration::from_secs(5)),
        };
        assert_eq!(
            park_until(&policy, &short, now),
            None,
            "retried in the step"
        );
        let final_error = Flaky {
            retryable: false,
            wait: Some(Duration::from_secs(2400)),
        };
        assert_eq!(park_until(&policy, &final_error, now), None);
        let days = Flaky {
            retryable: true,
            wait: Some(Duration::from_secs(7 * 24 * 3600)),
        };
        assert_eq!(park_until(&policy, &days, now), None, "beyond max_park");
        let llm = LlmError::RateLimited {
            retry_after: Some(Duration::from_secs(600)),
        };
        assert_eq!(park_until(&policy, &llm, now), Some(now + 600_000));
        let slack = SlackError::RateLimited {
            retry_after_secs: Some(900),
        };
        assert_eq!(
            park_until(&policy, &CallError::Adapter(slack), now),
            Some(now + 900_000)
        );
    }

    #[tokio::test]
    async fn success_after_a_failure_counts_both_attempts() {
        let mut n = 0;
        let (result, attempts) = retrying(&fast(), &clock(), || {
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
