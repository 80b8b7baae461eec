-- CallingBox core schema. One file for SQLite and PostgreSQL: portable SQL
-- only (TEXT ids, BIGINT times in unix microseconds, JSON kept as TEXT).

CREATE TABLE organizations (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- Money is integer milli-cents (1/1000 of a US cent).
    balance_milli_cents BIGINT NOT NULL,
    held_milli_cents BIGINT NOT NULL,
    -- Signs agent-level and per-call webhook_url deliveries.
    default_webhook_secret TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    name TEXT NOT NULL,
    -- The first characters of the key, to tell keys apart in listings.
    prefix TEXT NOT NULL,
    -- SHA-256 of the whole key; the key itself is never stored.
    key_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);

CREATE TABLE phone_numbers (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    e164 TEXT NOT NULL,
    friendly_name TEXT,
    country_code TEXT NOT NULL,
    number_type TEXT NOT NULL,
    status TEXT NOT NULL,
    monthly_cost_cents BIGINT NOT NULL,
    upfront_cost_cents BIGINT NOT NULL,
    -- Which carrier serves it: 'local' or 'sip_trunk'.
    carrier TEXT NOT NULL,
    -- The one inbound agent answering it (a single column: at most one).
    inbound_agent_id TEXT,
    -- Prompt-era inbound configuration (PUT /v1/numbers/{id}/inbound), JSON.
    inbound_config TEXT,
    purchased_at BIGINT NOT NULL,
    released_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE UNIQUE INDEX phone_numbers_active_e164 ON phone_numbers (e164) WHERE status = 'active';
CREATE INDEX phone_numbers_org ON phone_numbers (org_id, purchased_at, id);

CREATE TABLE agents (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    user_id TEXT NOT NULL,
    name TEXT NOT NULL,
    agent_type TEXT NOT NULL,
    persona TEXT,
    instructions TEXT NOT NULL,
    voice TEXT NOT NULL,
    language TEXT NOT NULL,
    returns_schema TEXT NOT NULL,
    tools TEXT NOT NULL,
    webhook_url TEXT,
    voicemail_action TEXT NOT NULL,
    primary_number_id TEXT,
    archived_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX agents_org ON agents (org_id, created_at, id);

CREATE TABLE agent_numbers (
    agent_id TEXT NOT NULL REFERENCES agents (id),
    number_id TEXT NOT NULL REFERENCES phone_numbers (id),
    attached_at BIGINT NOT NULL,
    PRIMARY KEY (agent_id, number_id)
);
CREATE INDEX agent_numbers_number ON agent_numbers (number_id);

CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    agent_id TEXT,
    direction TEXT NOT NULL,
    status TEXT NOT NULL,
    to_number TEXT NOT NULL,
    from_number TEXT NOT NULL,
    persona TEXT,
    instructions TEXT,
    prompt TEXT NOT NULL,
    context TEXT NOT NULL,
    returns_schema TEXT NOT NULL,
    result TEXT,
    result_status TEXT NOT NULL,
    result_error TEXT,
    language TEXT NOT NULL,
    voice TEXT NOT NULL,
    tools TEXT NOT NULL,
    voicemail_action TEXT NOT NULL,
    webhook_url TEXT,
    webhook_status TEXT NOT NULL,
    webhook_error TEXT,
    metadata TEXT NOT NULL,
    answered_by TEXT,
    error_code TEXT,
    error_message TEXT,
    hangup_cause TEXT,
    hold_milli_cents BIGINT NOT NULL,
    reservation_status TEXT NOT NULL,
    duration_seconds BIGINT,
    billed_duration_seconds BIGINT,
    billing_amount_milli_cents BIGINT,
    -- The serve node running the call (orphan recovery after a restart).
    node_id TEXT,
    idempotency_key TEXT,
    request_fingerprint TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    answered_at BIGINT,
    ended_at BIGINT,
    updated_at BIGINT NOT NULL
);
CREATE INDEX calls_org_created ON calls (org_id, created_at, id);
CREATE INDEX calls_status ON calls (status);
CREATE UNIQUE INDEX calls_idempotency ON calls (org_id, idempotency_key);

CREATE TABLE transcript_segments (
    call_id TEXT NOT NULL REFERENCES calls (id),
    sequence_no BIGINT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT,
    duration_ms BIGINT,
    source TEXT NOT NULL,
    PRIMARY KEY (call_id, sequence_no)
);

-- Every movement of money: credits added, holds, settlements, releases,
-- number purchases. The balance on organizations is their running sum.
CREATE TABLE ledger_entries (
    id TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES organizations (id),
    kind TEXT NOT NULL,
    amount_milli_cents BIGINT NOT NULL,
    call_id TEXT,
    number_id TEXT,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX ledger_entries_org ON ledger_entries (org_id, created_at);
