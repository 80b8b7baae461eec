//! Operator verbs: API keys and credits, straight on the database (the
//! public API has no key or billing endpoints, as the reference says).

use anyhow::{Context, Result, bail};
use callingbox::billing::dollars;
use callingbox::clock::{Clock, MonotonicClock};
use callingbox::config::Config;
use callingbox::store::{Store, keys, ledger, orgs};

/// Opens the configured database.
pub async fn open_store(config: &Config) -> Result<Store> {
    Store::open(&config.database_url)
        .await
        .with_context(|| format!("opening the database {}", config.database_url))
}

/// The organization named or identified by `org`, created (with the
/// starting credit) if no organization has that name.
pub async fn find_or_create_org(
    store: &Store,
    config: &Config,
    org: &str,
) -> Result<orgs::Organization> {
    let mut conn = store.pool().acquire().await?;
    if let Some(found) = orgs::get(&mut conn, org).await? {
        return Ok(found);
    }
    drop(conn);
    if let Some(found) = orgs::find_by_name(store, org).await? {
        return Ok(found);
    }
    let mut tx = store.begin().await?;
    let created = orgs::create(
        &mut tx,
        org,
        config.pricing().starting_credit_milli_cents,
        MonotonicClock::default().now(),
    )
    .await?;
    tx.commit().await?;
    eprintln!(
        "created organization {:?} ({}) with {} of starting credit",
        created.name,
        created.id,
        dollars(created.balance_milli_cents)
    );
    Ok(created)
}

/// `keys create`: prints the key once.
pub async fn create_key(
    config: &Config,
    org: &str,
    name: &str,
    expires_in_days: Option<u32>,
) -> Result<()> {
    let store = open_store(config).await?;
    let org = find_or_create_org(&store, config, org).await?;
    let now = MonotonicClock::default().now();
    let expires_at = expires_in_days.map(|days| now.plus_seconds(i64::from(days) * 86_400));
    let mut tx = store.begin().await?;
    let (record, key) = keys::create(&mut tx, &org.id, name, expires_at, now).await?;
    tx.commit().await?;
    eprintln!(
        "API key {:?} ({}) for organization {:?}; it is shown only now:",
        record.name, record.id, org.name
    );
    println!("{key}");
    Ok(())
}

/// `keys list`.
pub async fn list_keys(config: &Config) -> Result<()> {
    let store = open_store(config).await?;
    let now = MonotonicClock::default().now();
    println!(
        "{:<36}  {:<12}  {:<20}  {:<8}  {:<24}  ORG",
        "ID", "PREFIX", "NAME", "STATE", "CREATED"
    );
    for key in keys::list(&store, None).await? {
        let state = if key.revoked_at.is_some() {
            "revoked"
        } else if key.expires_at.is_some_and(|at| at <= now) {
            "expired"
        } else {
            "active"
        };
        println!(
            "{:<36}  {:<12}  {:<20}  {:<8}  {:<24}  {}",
            key.id, key.prefix, key.name, state, key.created_at, key.org_id
        );
    }
    Ok(())
}

/// `keys revoke`.
pub async fn revoke_key(config: &Config, id: &str) -> Result<()> {
    let store = open_store(config).await?;
    let mut tx = store.begin().await?;
    if !keys::revoke(&mut tx, id, MonotonicClock::default().now()).await? {
        bail!("no live API key with id {id}");
    }
    tx.commit().await?;
    eprintln!("revoked {id}: it stops working on its next request");
    Ok(())
}

/// `credits add`.
pub async fn add_credits(config: &Config, org: &str, amount: &str) -> Result<()> {
    let milli_cents = parse_dollars(amount)?;
    let store = open_store(config).await?;
    let org = find_or_create_org(&store, config, org).await?;
    let mut tx = store.begin().await?;
    ledger::add_credits(
        &mut tx,
        &org.id,
        milli_cents,
        "added by the operator",
        MonotonicClock::default().now(),
    )
    .await?;
    let after = orgs::get(&mut tx, &org.id)
        .await?
        .context("organization vanished")?;
    tx.commit().await?;
    println!(
        "{}: balance {} (held {})",
        after.name,
        dollars(after.balance_milli_cents),
        dollars(after.held_milli_cents)
    );
    Ok(())
}

/// `credits show`: balances and this month's usage of every organization.
pub async fn show_credits(config: &Config) -> Result<()> {
    let store = open_store(config).await?;
    let month_start = MonotonicClock::default().now().month_start();
    println!(
        "{:<24} {:>10} {:>10} {:>8} {:>12} {:>12}",
        "ORG", "BALANCE", "HELD", "CALLS", "BILLED MIN", "CALL COST"
    );
    for org in orgs::list(&store).await? {
        let usage = ledger::usage_since(&store, &org.id, month_start).await?;
        println!(
            "{:<24} {:>10} {:>10} {:>8} {:>12.1} {:>12}",
            org.name,
            dollars(org.balance_milli_cents),
            dollars(org.held_milli_cents),
            usage.calls,
            usage.billed_seconds as f64 / 60.0,
            dollars(usage.calls_milli_cents)
        );
    }
    Ok(())
}

/// `"10"`, `"10.5"`, `"$10.50"` as milli-cents.
pub fn parse_dollars(text: &str) -> Result<i64> {
    let text = text.trim().trim_start_matches('$');
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 2
        || !fraction.bytes().all(|b| b.is_ascii_digit())
    {
        bail!("amount must be dollars like 10 or 10.50, got {text:?}");
    }
    let whole: i64 = whole.parse().context("amount too large")?;
    let cents: i64 = format!("{fraction:0<2}").parse().unwrap_or(0);
    whole
        .checked_mul(100_000)
        .and_then(|w| w.checked_add(cents * 1_000))
        .context("amount too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_parse_to_milli_cents() {
        assert_eq!(parse_dollars("10").ok(), Some(1_000_000));
        assert_eq!(parse_dollars("$0.5").ok(), Some(50_000));
        assert_eq!(parse_dollars("1.05").ok(), Some(105_000));
        assert!(parse_dollars("-3").is_err());
        assert!(parse_dollars("1.234").is_err());
        assert!(parse_dollars("ten").is_err());
    }
}
