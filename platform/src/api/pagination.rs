//! Cursor pagination, newest first: `limit` (1-100, default 10),
//! `starting_after=<id>` (older items) or `ending_before=<id>` (newer
//! items), answered as `{"data": [...], "has_more": bool}`.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::error::ApiError;
use crate::store::{Cursor, Listing, Store, cursor_anchor};

/// Default page size.
pub const DEFAULT_LIMIT: i64 = 10;
/// Largest page size.
pub const MAX_LIMIT: i64 = 100;

/// The paging parameters of a list.
#[derive(Debug, Clone, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Items per page, 1-100 (default 10).
    pub limit: Option<i64>,
    /// Return items older than this id.
    pub starting_after: Option<String>,
    /// Return items newer than this id.
    pub ending_before: Option<String>,
}

/// A page of a list.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListPage<T> {
    /// The items, newest first.
    pub data: Vec<T>,
    /// More items exist in the direction read.
    pub has_more: bool,
}

impl PageParams {
    /// The page size, checked.
    pub fn limit(&self) -> Result<i64, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(format!(
                "limit must be between 1 and {MAX_LIMIT}, got {limit}"
            )));
        }
        Ok(limit)
    }

    /// Resolves the cursor against `listing` in `org_id`; an id not in
    /// that list is a 400 naming it.
    pub async fn cursor(
        &self,
        store: &Store,
        listing: Listing,
        org_id: &str,
    ) -> Result<Cursor, ApiError> {
        let anchor = |name: &'static str, id: &str| {
            let id = id.to_owned();
            async move {
                if !crate::store::is_uuid(&id) {
                    return Err(ApiError::bad_request(format!("{name} {id:?} is not an id")));
                }
                cursor_anchor(store, listing, org_id, &id)
                    .await?
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("{name} {id:?} is not an id in this list"))
                    })
            }
        };
        match (&self.starting_after, &self.ending_before) {
            (Some(_), Some(_)) => Err(ApiError::bad_request(
                "send starting_after or ending_before, not both",
            )),
            (None, None) => Ok(Cursor::Start),
            (Some(id), None) => {
                let (at, id) = anchor("starting_after", id).await?;
                Ok(Cursor::After(at, id))
            }
            (None, Some(id)) => {
                let (at, id) = anchor("ending_before", id).await?;
                Ok(Cursor::Before(at, id))
            }
        }
    }
}
