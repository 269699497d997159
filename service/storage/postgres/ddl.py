"""PostgreSQL's DDL: the statements of each schema step. Data only; imports nothing.

The same tables, CHECKs and indexes as SQLite's (``service/db/ddl.py``, at its current version), by PostgreSQL's
means: ``jsonb`` for metadata, event data and job results (so a CHECK need not ask whether the text is JSON),
``bigint`` identity ids, and the keyset order ``(start_time DESC, session_id)`` in the listing indexes so a page
is an index range. ``session_id`` compares bytewise (``COLLATE "C"``), as in SQLite, whatever the database's
locale: the keyset order of ties is the same on both engines (and cheaper to compare). A step's statements are
history: once released they never change (a new step is appended in ``migrations.py``). The CHECKs spell
``service.sessions.domain``'s values; the tests assert they agree.
"""

SESSIONS_DDL = """
CREATE TABLE sessions (
    session_id    text COLLATE "C" PRIMARY KEY,
    user_id       text NOT NULL,
    start_time    bigint NOT NULL,
    end_time      bigint,
    start_state   integer NOT NULL CHECK (start_state BETWEEN 0 AND 8),
    end_state     integer CHECK (end_state IS NULL OR end_state BETWEEN 0 AND 8),
    current_state integer NOT NULL CHECK (current_state BETWEEN 0 AND 8),
    status        text NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'COMPLETED', 'CANCELLED', 'FAULTED')),
    metadata      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at    bigint NOT NULL,
    updated_at    bigint NOT NULL,
    CHECK ((status IN ('ACTIVE', 'INACTIVE')) = (end_time IS NULL)),
    CHECK ((end_time IS NULL) = (end_state IS NULL)),
    CHECK (end_time IS NULL OR end_time >= start_time)
)
"""

# Identity ids come from a sequence, so they follow insertion order; the stores lock the session row before
# inserting its events, so within one session insertion order is commit order.
EVENTS_DDL = """
CREATE TABLE session_events (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    session_id text COLLATE "C" NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    event_type text NOT NULL CHECK (length(event_type) BETWEEN 1 AND 64),
    timestamp  bigint NOT NULL,
    event_data jsonb
)
"""

# Each index names the query it exists for (tests/storage/postgres check EXPLAIN uses it).
INDEXES = (
    # list, newest first, no filter: the keyset order itself
    "CREATE INDEX idx_sessions_start_time ON sessions (start_time DESC, session_id)",
    # counts by status (stats)
    "CREATE INDEX idx_sessions_status ON sessions (status)",
    # ended_after/ended_before without status
    "CREATE INDEX idx_sessions_end_time ON sessions (end_time DESC)",
    # recently created (admin views)
    "CREATE INDEX idx_sessions_created_at ON sessions (created_at DESC)",
    # list filtered by status
    "CREATE INDEX idx_sessions_status_start ON sessions (status, start_time DESC, session_id)",
    # cleanup and ended-range queries by status
    "CREATE INDEX idx_sessions_status_end ON sessions (status, end_time DESC)",
    # a teacher's own sessions
    "CREATE INDEX idx_sessions_user_start ON sessions (user_id, start_time DESC, session_id)",
    # active sessions (students' listing); the predicate stays a literal so the planner can prove it
    "CREATE INDEX idx_sessions_active ON sessions (start_time DESC, session_id) "
    "WHERE status = 'ACTIVE' AND end_time IS NULL",
    # events of one session in order (also the foreign key's index: a session delete cascades through it)
    "CREATE INDEX idx_events_session ON session_events (session_id, id)",
    # recent events
    "CREATE INDEX idx_events_timestamp ON session_events (timestamp DESC)",
    # stats: events per type
    "CREATE INDEX idx_events_type ON session_events (event_type)",
)

# RFC 7396 JSON merge patch (SQLite's json_patch). jsonb ``||`` is not one: it keeps nulls and replaces nested
# objects whole. A non-object patch replaces the target; null members remove keys; object members merge
# recursively (into {} when the target's member is missing or not an object, which also drops their nulls).
MERGE_PATCH_FUNCTION = """
CREATE FUNCTION json_merge_patch(target jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    result jsonb;
    k text;
    v jsonb;
BEGIN
    IF patch IS NULL OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    IF target IS NULL OR jsonb_typeof(target) <> 'object' THEN
        result := '{}'::jsonb;
    ELSE
        result := target;
    END IF;
    FOR k, v IN SELECT key, value FROM jsonb_each(patch) LOOP
        IF jsonb_typeof(v) = 'null' THEN
            result := result - k;
        ELSE
            result := result || jsonb_build_object(k, json_merge_patch(result -> k, v));
        END IF;
    END LOOP;
    RETURN result;
END
$$
"""

# Step "sessions": what SQLite's v1 + v2 hold (INACTIVE included from the start), and the merge-patch function.
SESSIONS_V1 = (SESSIONS_DDL, EVENTS_DDL, *INDEXES, MERGE_PATCH_FUNCTION)

# The markdown library (SPEC "Library and jobs"); the bounds mirror ``service.library.models``.
LIBRARY_FILES_DDL = """
CREATE TABLE library_files (
    id         bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    owner_id   text NOT NULL CHECK (length(owner_id) BETWEEN 1 AND 128),
    filename   text NOT NULL CHECK (length(filename) BETWEEN 4 AND 200 AND filename LIKE '%.md'),
    content    text NOT NULL,
    size_bytes integer NOT NULL CHECK (size_bytes BETWEEN 1 AND 1073741824),
    created_at bigint NOT NULL,
    CHECK (octet_length(content) = size_bytes),
    UNIQUE (owner_id, filename)
)
"""

LIBRARY_V1 = (LIBRARY_FILES_DDL, "CREATE INDEX idx_library_filename ON library_files (filename, id)")

# Durable ingestion jobs: claimed with a lease (``FOR UPDATE SKIP LOCKED``), so one replica runs each.
INGESTION_JOBS_DDL = """
CREATE TABLE ingestion_jobs (
    job_id       text PRIMARY KEY CHECK (length(job_id) BETWEEN 1 AND 64),
    owner_id     text NOT NULL CHECK (length(owner_id) BETWEEN 1 AND 128),
    owner_role   text NOT NULL CHECK (owner_role IN ('admin', 'teacher')),
    session_id   text NOT NULL,
    status       text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'completed_with_errors', 'failed')),
    params       jsonb NOT NULL,
    files        jsonb NOT NULL CHECK (jsonb_typeof(files) = 'array'),
    results      jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(results) = 'array'),
    errors       jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(errors) = 'array'),
    current_file text,
    total_chunks integer NOT NULL DEFAULT 0 CHECK (total_chunks >= 0),
    lease_owner  text,
    lease_until  bigint,
    attempts     integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at   bigint NOT NULL,
    started_at   bigint,
    completed_at bigint
)
"""

INGESTION_JOBS_V1 = (
    INGESTION_JOBS_DDL,
    "CREATE INDEX idx_ingestion_jobs_claim ON ingestion_jobs (status, lease_until, created_at)",
)

# The version table: one row per step applied (the schema's version is the highest).
SCHEMA_VERSION_DDL = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY CHECK (version > 0),
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""
