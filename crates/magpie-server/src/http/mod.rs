//! The HTTP API (`/v1/...`), `/healthz` and `/metrics`.

pub use errors::group_error;

mod accounts;
mod conversations;
mod errors;
mod friends;
mod groups;
mod presence;
mod sync;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use axum::Router;
use serde::de::DeserializeOwned;

use magpie_protocol::ErrorCode;
use magpie_store::StoreError;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest HTTP body accepted: room for a 100,000-character message even if every character
/// arrives as a six-byte `\uXXXX` escape, plus the envelope.
pub const HTTP_BODY_BYTES_MAX: usize = crate::ws::FRAME_BYTES_MAX;

/// All HTTP routes (the WebSocket route is added by the caller).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/accounts", post(accounts::register))
        .route("/v1/sessions", post(accounts::login))
        .route("/v1/sessions/current", delete(accounts::logout))
        .route("/v1/users", get(accounts::user_by_name))
        .route("/v1/users/{user_id}", get(accounts::user_by_id))
        .route("/v1/conversations", get(conversations::list))
        .route("/v1/conversations/direct", post(conversations::open_direct))
        .route("/v1/conversations/{id}/read", post(conversations::read))
        .route(
            "/v1/conversations/{id}/receipts",
            get(conversations::receipts),
        )
        .route(
            "/v1/conversations/{id}/settings",
            put(conversations::settings),
        )
        .route("/v1/friends", get(friends::list))
        .route("/v1/friends/{user_id}", delete(friends::remove))
        .route(
            "/v1/friends/requests",
            post(friends::request).get(friends::requests),
        )
        .route("/v1/friends/requests/{id}/accept", post(friends::accept))
        .route("/v1/friends/requests/{id}/decline", post(friends::decline))
        .route("/v1/groups", post(groups::create))
        .route("/v1/groups/{id}", get(groups::get).patch(groups::rename))
        .route(
            "/v1/groups/{id}/members",
            get(groups::members).post(groups::add),
        )
        .route(
            "/v1/groups/{id}/members/{user_id}",
            delete(groups::remove).put(groups::set_role),
        )
        .route("/v1/presence", get(presence::presence))
        .route(
            "/v1/conversations/{id}/messages",
            get(conversations::history).post(conversations::send),
        )
        .route("/v1/sync", get(sync::sync))
}

/// `GET /healthz`: 200 while the store takes writes; 503 `unavailable` once it refuses them
/// (after a failed durable write, which needs a restart, or while shutting down), so that a
/// supervisor or load balancer takes the node out.
async fn healthz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if state.shutdown_requested() {
        return Err(StoreError::Closed.into());
    }
    state.store.health()?;
    Ok("ok")
}

/// Any path no route serves: 404 with the v1 error body.
pub async fn no_route() -> ApiError {
    no_such_endpoint()
}

/// The answer for a path nothing serves (also missing web assets).
pub fn no_such_endpoint() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}

/// A known path with a method it does not serve: 405 with the v1 error body.
pub async fn wrong_method() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

async fn metrics() -> impl IntoResponse {
    match crate::metrics_setup::handle() {
        Some(h) => h.render(),
        None => String::new(),
    }
}

/// Longest a JSON request body may take to arrive after its headers.
pub const HTTP_BODY_READ_MS: u64 = 30_000;

/// `Json` whose rejections use the v1 error body, and whose body must arrive within
/// [`HTTP_BODY_READ_MS`].
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        // A body trickled a byte at a time would hold its connection (and the handler) for
        // as long as the client likes; hyper bounds only the headers.
        let body = tokio::time::timeout(
            std::time::Duration::from_millis(HTTP_BODY_READ_MS),
            axum::Json::<T>::from_request(req, state),
        )
        .await
        .map_err(|_| ApiError::invalid("the request body took too long to arrive"))?;
        match body {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            // Only a body over the limit is "too large"; a body that failed to arrive (a
            // malformed chunk, a reset) is a bad request.
            Err(e @ JsonRejection::BytesRejection(_))
                if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(ApiError::new(
                    magpie_protocol::ErrorCode::PayloadTooLarge,
                    e.body_text(),
                ))
            }
            Err(e) => Err(ApiError::invalid(e.body_text())),
        }
    }
}

/// `Query` whose rejections use the v1 error body.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(e @ QueryRejection::FailedToDeserializeQueryString(_)) => {
                Err(ApiError::invalid(e.body_text()))
            }
            Err(e) => Err(ApiError::invalid(e.body_text())),
        }
    }
}

/// `Path` whose rejections (a segment that is not UTF-8 once percent-decoded) use the v1
/// error body: 404, since such a path names nothing.
pub struct ApiPath<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(ApiPath(v)),
            Err(e) => Err(ApiError::new(ErrorCode::NotFound, e.body_text())),
        }
    }
}

/// Parses a path id, answering 404 for anything that is not an id.
pub fn parse_id<T: std::str::FromStr>(raw: &str, what: &str) -> Result<T, ApiError> {
    raw.parse().map_err(|_| ApiError::not_found(what))
}
