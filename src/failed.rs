//! The one shape of a future that may have failed before it started.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;

use crate::BoxError;

pin_project! {
    /// Either a running future, or the error that ended a request before
    /// it started: a panic caught in `call`, a request refused at the gate,
    /// a connection that was already gone.
    #[project = OrFailedProj]
    pub(crate) enum OrFailed<F> {
        Running { #[pin] future: F },
        Failed { error: Option<BoxError> },
    }
}

impl<F> OrFailed<F> {
    pub(crate) fn running(future: F) -> Self {
        Self::Running { future }
    }

    pub(crate) fn failed(error: impl Into<BoxError>) -> Self {
        Self::Failed {
            error: Some(error.into()),
        }
    }
}

impl<F, T> Future for OrFailed<F>
where
    F: Future<Output = Result<T, BoxError>>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            OrFailedProj::Running { future } => future.poll(cx),
            OrFailedProj::Failed { error } => {
                Poll::Ready(Err(error.take().expect("polled after completion")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::ready;

    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn runs_the_future_or_gives_the_error_once() {
        let running = OrFailed::running(ready(Ok::<_, BoxError>(7)));
        assert_eq!(running.now_or_never().unwrap().unwrap(), 7);
        let failed = OrFailed::<std::future::Ready<Result<u8, BoxError>>>::failed("gone");
        let error = failed.now_or_never().unwrap().unwrap_err();
        assert_eq!(error.to_string(), "gone");
    }
}
