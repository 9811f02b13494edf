//! JSON errors, and extractors whose rejections are JSON errors too.
//!
//! Every error the API answers is `{"error": "..."}`, with a `"detail"` field when there is
//! more to say (what exactly was wrong with a request body, say).
//!
//! | status | when |
//! |---|---|
//! | 400 | the body is not JSON (syntax), or a path id is not a number |
//! | 401 | wrong credentials, or no logged-in session |
//! | 404 | no such product or route |
//! | 405 | the route exists, the method does not |
//! | 413 | the body is too large |
//! | 415 | the body is not declared as `application/json` |
//! | 422 | the body is JSON but not what the endpoint accepts (missing or unknown fields, wrong types, invalid values, an id that contradicts the path) |
//! | 500 | the session store refused a write |
//! | 503 | the session store could not be read for stats |

use std::borrow::Cow;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// An error answered as `{"error": ..., "detail"?: ...}` with a status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: Cow<'static, str>,
    detail: Option<String>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
}

impl ApiError {
    /// An error with a status and a message.
    pub fn new(status: StatusCode, error: impl Into<Cow<'static, str>>) -> Self {
        Self {
            status,
            error: error.into(),
            detail: None,
        }
    }

    /// Adds a detail.
    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// 401 with a message.
    pub fn unauthorized(error: &'static str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, error)
    }

    /// 404 with a message.
    pub fn not_found(error: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::NOT_FOUND, error)
    }

    /// 422 with a message.
    pub fn unprocessable(error: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, error)
    }

    /// 500 with a message (the cause belongs in the log, not in the answer).
    pub fn internal(error: &'static str) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: &self.error,
            detail: self.detail.as_deref(),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let detail = rejection.body_text();
        let (status, error) = match &rejection {
            JsonRejection::JsonSyntaxError(_) => (StatusCode::BAD_REQUEST, "Malformed JSON"),
            JsonRejection::JsonDataError(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "Invalid request body")
            }
            JsonRejection::MissingJsonContentType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Expected a JSON body (Content-Type: application/json)",
            ),
            _ => (rejection.status(), "Cannot read the request body"),
        };
        Self::new(status, error).detail(detail)
    }
}

/// `axum::Json`, answering a bad body with a JSON error (see the module docs).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(Self(value))
    }
}

/// The `{id}` of a product route, answering anything but a whole number with a 400.
#[derive(Debug, Clone, Copy)]
pub struct ProductId(pub u64);

impl<S: Send + Sync> FromRequestParts<S> for ProductId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<u64>::from_request_parts(parts, state).await {
            Ok(Path(id)) => Ok(Self(id)),
            Err(rejection) => Err(path_error(&rejection)),
        }
    }
}

fn path_error(rejection: &PathRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "Invalid product id").detail(format!(
        "{} (a product id is a whole number, as in /api/products/42)",
        rejection.body_text()
    ))
}

/// The answer for routes that do not exist.
pub async fn not_found() -> ApiError {
    ApiError::not_found("Not found")
}

/// The answer for methods a route does not have.
pub async fn method_not_allowed() -> ApiError {
    ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
}
