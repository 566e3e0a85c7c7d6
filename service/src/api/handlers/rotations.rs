//! `/v1/rotations/{id}`, and the wait behind `?wait=true` on "rotate now":
//! woken by the engine's NOTIFY when a rotation finishes, polling meanwhile.

use std::time::Duration;

use axum::{Json, extract::State};
use uuid::Uuid;

use crate::{
    api::{
        auth::Action,
        context::{Inner, Shared},
        extract::{PathParam, Req},
        problem::{HttpError, Problem},
        views::RotationView,
    },
    store::rotations::Rotation,
};

/// The channel the engine notifies (payload: the rotation id) when a rotation finishes.
pub const ROTATION_DONE_CHANNEL: &str = crate::store::engine::DONE_CHANNEL;

/// How often `?wait=true` re-reads a rotation when no notification arrives.
const WAIT_POLL: Duration = Duration::from_millis(500);

/// Waits until `rotation` has finished or `[api].wait_timeout` has passed.
pub async fn wait_finished(s: &Inner, rotation: Rotation) -> Result<Rotation, HttpError> {
    let mut rx = s.done.subscribe();
    let deadline = tokio::time::Instant::now() + s.wait_timeout;
    let id = rotation.id;
    let mut current = rotation;
    loop {
        if current.is_finished() || tokio::time::Instant::now() >= deadline {
            return Ok(current);
        }
        let poll_at = (tokio::time::Instant::now() + WAIT_POLL).min(deadline);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Ok(done) if done.parse::<Uuid>().is_ok_and(|d| d != id) => continue,
                    _ => break,
                },
                () = tokio::time::sleep_until(poll_at) => break,
            }
        }
        current = s
            .api
            .store
            .rotation(id)
            .await?
            .ok_or_else(|| HttpError::internal("the rotation disappeared", id))?;
    }
}

#[utoipa::path(get, path = "/v1/rotations/{id}", tag = "credentials",
    params(("id" = Uuid, Path, description = "Rotation id")),
    responses(
        (status = 200, description = "The rotation", body = RotationView),
        (status = 404, description = "No rotation with that id", body = Problem, content_type = "application/problem+json")))]
pub async fn get_rotation(
    State(s): State<Shared>,
    req: Req,
    PathParam(id): PathParam<Uuid>,
) -> Result<Json<RotationView>, HttpError> {
    s.authorize(&req, Action::GetRotation, None).await?;
    match s.api.store.rotation(id).await? {
        Some(r) => Ok(Json(r.into())),
        None => Err(HttpError::NotFound(format!("no rotation with id {id}"))),
    }
}
