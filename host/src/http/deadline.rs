//! Around every route: sheds load past the in-flight cap (503) and cuts off
//! a request, slow body included, that takes longer than allowed.
//!
//! A layer of its own rather than `axum::middleware::from_fn`: that one
//! clones the inner service and boxes two futures for every request, which
//! on the webhook's path cost more than the rest of the routing.

use super::{AppError, AppState};
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Timeout;

#[derive(Clone)]
pub struct DeadlineLayer(pub AppState);

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline {
            inner,
            state: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
    state: AppState,
}

impl<S> tower::Service<Request> for Deadline<S>
where
    S: tower::Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = DeadlineFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        match self.state.inflight.clone().try_acquire_owned() {
            Ok(permit) => DeadlineFuture::Running {
                inner: tokio::time::timeout(self.state.request_timeout, self.inner.call(req)),
                _permit: permit,
            },
            Err(_) => DeadlineFuture::Refused {
                response: Some(AppError::Busy.into_response()),
            },
        }
    }
}

pin_project_lite::pin_project! {
    #[project = Projected]
    pub enum DeadlineFuture<F> {
        Running {
            #[pin]
            inner: Timeout<F>,
            // Held until the answer is ready (or the request is dropped).
            _permit: OwnedSemaphorePermit,
        },
        Refused { response: Option<Response> },
    }
}

impl<F> Future for DeadlineFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projected::Running { inner, .. } => match inner.poll(cx) {
                Poll::Ready(Ok(answer)) => Poll::Ready(answer),
                Poll::Ready(Err(_)) => Poll::Ready(Ok(AppError::Timeout.into_response())),
                Poll::Pending => Poll::Pending,
            },
            Projected::Refused { response } => Poll::Ready(Ok(response
                .take()
                .expect("a refused request's future is polled once"))),
        }
    }
}
