-- Webhooks: account endpoints, the outbox of deliveries (one row per event
-- and destination, written in the transaction of the state change that
-- caused it) and every attempt. Portable SQL only, as 0001.

CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    url TEXT NOT NULL,
    description TEXT,
    -- JSON array of event types, or ["*"].
    enabled_events TEXT NOT NULL,
    signing_secret TEXT NOT NULL,
    -- 'enabled' or 'disabled'.
    status TEXT NOT NULL,
    disabled_reason TEXT,
    disabled_at BIGINT,
    -- Exhausted deliveries in a row; reset by any 2xx.
    consecutive_failures BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_org ON webhook_endpoints (org_id, created_at, id);

CREATE TABLE webhook_deliveries (
    -- Also the envelope's id and the CallingBox-Event-Id header.
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    -- NULL: an inline delivery (the call's webhook_url, org default secret).
    endpoint_id TEXT,
    call_id TEXT,
    event_type TEXT NOT NULL,
    -- The destination, snapshotted when the event was emitted.
    url TEXT NOT NULL,
    -- The exact body sent on every attempt (the call as of the event).
    payload TEXT NOT NULL,
    -- 'pending', 'delivered' or 'exhausted'.
    status TEXT NOT NULL,
    attempt_count BIGINT NOT NULL,
    manual_retry_count BIGINT NOT NULL,
    -- 1 when the next attempt is a manual redelivery (not counted in
    -- attempt_count).
    manual_pending BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    last_response_status BIGINT,
    delivered_at BIGINT,
    -- The worker holding the row while it attempts it, and until when.
    lease_owner TEXT,
    lease_expires_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_org ON webhook_deliveries (org_id, created_at, id);
CREATE INDEX webhook_deliveries_call ON webhook_deliveries (call_id);
CREATE INDEX webhook_deliveries_endpoint ON webhook_deliveries (endpoint_id, status);
CREATE INDEX webhook_deliveries_lease ON webhook_deliveries (lease_owner);

CREATE TABLE webhook_attempts (
    id TEXT PRIMARY KEY,
    delivery_id TEXT NOT NULL REFERENCES webhook_deliveries (id),
    -- 1 for a manual redelivery.
    manual BIGINT NOT NULL,
    -- The node that made it.
    node_id TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    -- NULL when no HTTP answer came (refused, connection error, timeout).
    response_status BIGINT,
    -- NULL on success.
    error TEXT,
    -- The first bytes of the response body (capped).
    response_excerpt TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, started_at);
