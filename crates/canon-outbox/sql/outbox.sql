-- Canon's transactional outbox, version 1. `{table}` is the outbox table's (optionally
-- schema-qualified) name, `canon_outbox` by default. Producers INSERT into it in the same
-- transaction as their business writes; `canon relay` moves committed rows into Canon and
-- deletes them. Idempotent: running it again changes nothing.
--
-- A row needs only `event`: a CloudEvent in the JSON format (or a document of `dialect`).
-- `topic` names the topic when no catalog declares the type; `expected_sequence` is the
-- optimistic-concurrency guard of the event's aggregate (0: a new aggregate). Keep the id
-- sequence's default CACHE of 1: ids must increase in the order rows are inserted.
CREATE TABLE IF NOT EXISTS {table} (
    id                bigserial   PRIMARY KEY,
    created_at        timestamptz NOT NULL DEFAULT now(),
    topic             text,
    dialect           text,
    expected_sequence bigint,
    event             json        NOT NULL
);

-- Rows the relay could not publish (an invalid event, a conflict), with the reason. They are
-- out of the way of the rows behind them; nothing is ever dropped silently.
CREATE TABLE IF NOT EXISTS {table}_rejected (
    id                bigint      PRIMARY KEY,
    created_at        timestamptz NOT NULL,
    topic             text,
    dialect           text,
    expected_sequence bigint,
    event             json        NOT NULL,
    rejected_at       timestamptz NOT NULL DEFAULT now(),
    reason            text        NOT NULL
);

-- Wakes the relay at once after a commit that inserted rows (it also polls).
CREATE OR REPLACE FUNCTION {table}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('canon_outbox', TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME);
    RETURN NULL;
END
$$;
-- Created only if missing: replacing a trigger locks the table against the producers' inserts.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_trigger
                   WHERE tgname = 'canon_outbox_notify' AND tgrelid = '{table}'::regclass) THEN
        CREATE TRIGGER canon_outbox_notify AFTER INSERT ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION {table}_notify();
    END IF;
END
$$;
