//! The ledger: every movement of credits, and the organization's balance and
//! holds kept in step with it inside the same transaction.

use sqlx::{AnyConnection, Row};

use super::{Store, StoreError, new_id};
use crate::clock::Timestamp;

/// What kind of movement a ledger entry is.
pub mod kind {
    /// Credits added (starting credit, operator top-up).
    pub const CREDIT: &str = "credit";
    /// A call's hold placed (no balance change; holds are tracked apart).
    pub const HOLD: &str = "hold";
    /// A call's hold released without charge.
    pub const RELEASE: &str = "release";
    /// A call's connected time charged.
    pub const CALL_CHARGE: &str = "call_charge";
    /// A number purchase charged.
    pub const NUMBER_PURCHASE: &str = "number_purchase";
}

/// One ledger row.
struct Entry<'a> {
    org_id: &'a str,
    kind: &'a str,
    amount: i64,
    call_id: Option<&'a str>,
    number_id: Option<&'a str>,
    description: &'a str,
}

async fn record(
    conn: &mut AnyConnection,
    entry: Entry<'_>,
    now: Timestamp,
) -> Result<(), StoreError> {
    let Entry {
        org_id,
        kind,
        amount,
        call_id,
        number_id,
        description,
    } = entry;
    sqlx::query(
        "INSERT INTO ledger_entries (id, org_id, kind, amount_milli_cents, call_id, number_id, \
         description, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(new_id())
    .bind(org_id)
    .bind(kind)
    .bind(amount)
    .bind(call_id)
    .bind(number_id)
    .bind(description)
    .bind(now.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Adds credits to the balance.
pub async fn add_credits(
    conn: &mut AnyConnection,
    org_id: &str,
    amount: i64,
    description: &str,
    now: Timestamp,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE organizations SET balance_milli_cents = balance_milli_cents + $1 WHERE id = $2",
    )
    .bind(amount)
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    record(
        conn,
        Entry {
            org_id,
            kind: kind::CREDIT,
            amount,
            call_id: None,
            number_id: None,
            description,
        },
        now,
    )
    .await
}

/// Holds `amount` for a call if the available credits (balance minus holds)
/// cover it; false (and nothing written) if they do not. The check and the
/// hold are one statement, so concurrent dispatches cannot overdraw.
pub async fn try_hold(
    conn: &mut AnyConnection,
    org_id: &str,
    call_id: &str,
    amount: i64,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE organizations SET held_milli_cents = held_milli_cents + $1 \
         WHERE id = $2 AND balance_milli_cents - held_milli_cents >= $1",
    )
    .bind(amount)
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    let description = format!("hold {amount}");
    let entry = Entry {
        org_id,
        kind: kind::HOLD,
        amount: 0,
        call_id: Some(call_id),
        number_id: None,
        description: &description,
    };
    record(conn, entry, now).await?;
    Ok(true)
}

/// Ends a call's hold of `held`: charges `charge` (at most the hold) and
/// releases the rest.
pub async fn settle_hold(
    conn: &mut AnyConnection,
    org_id: &str,
    call_id: &str,
    held: i64,
    charge: i64,
    now: Timestamp,
) -> Result<(), StoreError> {
    let charge = charge.clamp(0, held.max(0));
    sqlx::query(
        "UPDATE organizations SET held_milli_cents = held_milli_cents - $1, \
         balance_milli_cents = balance_milli_cents - $2 WHERE id = $3",
    )
    .bind(held)
    .bind(charge)
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    let (kind, description) = if charge > 0 {
        (kind::CALL_CHARGE, "connected time")
    } else {
        (kind::RELEASE, "hold released")
    };
    let entry = Entry {
        org_id,
        kind,
        amount: -charge,
        call_id: Some(call_id),
        number_id: None,
        description,
    };
    record(conn, entry, now).await?;
    Ok(())
}

/// Charges a number purchase if the available credits cover it; false (and
/// nothing written) if they do not.
pub async fn try_charge_number(
    conn: &mut AnyConnection,
    org_id: &str,
    number_id: &str,
    amount: i64,
    description: &str,
    now: Timestamp,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE organizations SET balance_milli_cents = balance_milli_cents - $1 \
         WHERE id = $2 AND balance_milli_cents - held_milli_cents >= $1",
    )
    .bind(amount)
    .bind(org_id)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Ok(false);
    }
    let entry = Entry {
        org_id,
        kind: kind::NUMBER_PURCHASE,
        amount: -amount,
        call_id: None,
        number_id: Some(number_id),
        description,
    };
    record(conn, entry, now).await?;
    Ok(true)
}

/// Usage since `since`: what was charged for calls and numbers, and the
/// connected seconds billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Milli-cents charged for calls.
    pub calls_milli_cents: i64,
    /// Milli-cents charged for numbers.
    pub numbers_milli_cents: i64,
    /// Milli-cents of credit added.
    pub credits_added_milli_cents: i64,
    /// Calls that ended in the period.
    pub calls: i64,
    /// Billed connected seconds of those calls.
    pub billed_seconds: i64,
}

/// The organization's usage since `since`.
pub async fn usage_since(
    store: &Store,
    org_id: &str,
    since: Timestamp,
) -> Result<Usage, StoreError> {
    let rows = sqlx::query(
        "SELECT kind, CAST(SUM(amount_milli_cents) AS BIGINT) AS total FROM ledger_entries \
         WHERE org_id = $1 AND created_at >= $2 GROUP BY kind",
    )
    .bind(org_id)
    .bind(since.0)
    .fetch_all(store.pool())
    .await?;
    let mut usage = Usage::default();
    for row in rows {
        let kind: String = row.try_get("kind")?;
        let total: Option<i64> = row.try_get("total")?;
        let total = total.unwrap_or(0);
        match kind.as_str() {
            kind::CALL_CHARGE => usage.calls_milli_cents = -total,
            kind::NUMBER_PURCHASE => usage.numbers_milli_cents = -total,
            kind::CREDIT => usage.credits_added_milli_cents = total,
            _ => {}
        }
    }
    let row = sqlx::query(
        "SELECT COUNT(*) AS calls, CAST(SUM(billed_duration_seconds) AS BIGINT) AS seconds FROM calls \
         WHERE org_id = $1 AND ended_at >= $2",
    )
    .bind(org_id)
    .bind(since.0)
    .fetch_one(store.pool())
    .await?;
    usage.calls = row.try_get("calls")?;
    usage.billed_seconds = row.try_get::<Option<i64>, _>("seconds")?.unwrap_or(0);
    Ok(usage)
}
