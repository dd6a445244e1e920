-- Canon's PostgreSQL backend, version 1. Every object lives in one schema (`{schema}`, the
-- backend's configured schema), so that several Canon installations can share a database.
-- Times are the database's clock (`now()`), which every Canon process shares.

-- One row per topic. `last_seq` is the newest sequence handed out; a publish locks this row,
-- so sequences are handed out in commit order and a reader never sees a gap fill later.
CREATE TABLE {schema}.topics (
    name            text    PRIMARY KEY,
    dedup_window_ms bigint  NOT NULL,
    max_age_ms      bigint,
    max_bytes       bigint,
    last_seq        bigint  NOT NULL DEFAULT 0,
    bytes           bigint  NOT NULL DEFAULT 0
);

-- The log. `event` is the event's JSON format, byte for byte as Canon encodes it.
CREATE TABLE {schema}.events (
    topic          text        NOT NULL,
    seq            bigint      NOT NULL,
    stored_at      timestamptz NOT NULL,
    ordering_key   text,
    id             text        NOT NULL,
    type           text        NOT NULL,
    correlation_id text,
    causation_id   text,
    size           integer     NOT NULL,
    event          bytea       NOT NULL,
    PRIMARY KEY (topic, seq)
);
CREATE INDEX events_by_id ON {schema}.events (topic, id);
CREATE INDEX events_by_correlation ON {schema}.events (topic, correlation_id)
    WHERE correlation_id IS NOT NULL;
CREATE INDEX events_by_causation ON {schema}.events (topic, causation_id)
    WHERE causation_id IS NOT NULL;
CREATE INDEX events_by_time ON {schema}.events (topic, stored_at);

-- What a publish is deduplicated against within the topic's window: kind 'i' is (source, id),
-- kind 'k' an idempotency key (in `a`, with `b` empty).
CREATE TABLE {schema}.dedup (
    topic     text        NOT NULL,
    kind      text        NOT NULL,
    a         text        NOT NULL,
    b         text        NOT NULL,
    seq       bigint      NOT NULL,
    stored_at timestamptz NOT NULL,
    PRIMARY KEY (topic, kind, a, b)
);
CREATE INDEX dedup_by_time ON {schema}.dedup (topic, stored_at);

-- The last stored sequence of each ordering key (expected-sequence checks, P6).
CREATE TABLE {schema}.aggregates (
    topic    text   NOT NULL,
    key      text   NOT NULL,
    last_seq bigint NOT NULL,
    PRIMARY KEY (topic, key)
);

-- Consumer groups. Every sequence at or below `cursor` has been taken into the group's work:
-- it is done, or it has a row in `deliveries`.
CREATE TABLE {schema}.groups (
    topic  text   NOT NULL,
    name   text   NOT NULL,
    config jsonb  NOT NULL,
    cursor bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (topic, name)
);

-- A group's pending events at or below its cursor. state 0: waiting until `due_at` (a retry,
-- a scheduled or redriven event); 1: leased until `due_at` under `handle`; 2: held behind an
-- earlier event of its ordering key (ordered groups). `history` holds the failed attempts.
CREATE TABLE {schema}.deliveries (
    topic        text        NOT NULL,
    grp          text        NOT NULL,
    seq          bigint      NOT NULL,
    state        smallint    NOT NULL,
    due_at       timestamptz NOT NULL,
    handle       bigint      NOT NULL DEFAULT 0,
    consumer     text        NOT NULL DEFAULT '',
    ordering_key text,
    history      jsonb       NOT NULL DEFAULT '[]',
    PRIMARY KEY (topic, grp, seq)
);
CREATE INDEX deliveries_due ON {schema}.deliveries (topic, grp, state, due_at);
CREATE INDEX deliveries_by_key ON {schema}.deliveries (topic, grp, ordering_key, seq)
    WHERE ordering_key IS NOT NULL;

-- Dead letters. Each holds its own copy of the event, so retention never empties a DLQ.
CREATE TABLE {schema}.dead_letters (
    topic        text        NOT NULL,
    grp          text        NOT NULL,
    seq          bigint      NOT NULL,
    stored_at    timestamptz NOT NULL,
    ordering_key text,
    id           text        NOT NULL,
    type         text        NOT NULL,
    event        bytea       NOT NULL,
    reason       text        NOT NULL,
    last_error   text,
    attempts     integer     NOT NULL,
    history      jsonb       NOT NULL,
    at           timestamptz NOT NULL,
    PRIMARY KEY (topic, grp, seq)
);

-- Key-value buckets. Revisions come from one sequence, so a key deleted and written again
-- still gets a higher revision.
CREATE SEQUENCE {schema}.kv_revision;
CREATE TABLE {schema}.kv (
    bucket   text   NOT NULL,
    key      text   NOT NULL,
    value    bytea  NOT NULL,
    revision bigint NOT NULL,
    PRIMARY KEY (bucket, key)
);
