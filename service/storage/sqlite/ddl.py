"""SQLite's DDL: the statements of each schema version, and the legacy gateway's table. Data only.

SQLite dialect throughout (``WITHOUT ROWID``, ``json_valid``, partial indexes, ``AUTOINCREMENT``): another engine
gets a module of its own. It imports nothing, so every module may import it without a cycle. A version's
statements are history: once released they never change (a new version is a new migration step in
``migrations.py``). The CHECKs spell the values of ``service.sessions.domain`` (statuses, states 0..8, event types
of 1..64 characters); ``tests/storage/sqlite/test_db_constraints.py`` asserts they agree.
"""

SESSIONS_DDL = """
CREATE TABLE sessions (
    session_id    TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    start_time    INTEGER NOT NULL,
    end_time      INTEGER,
    start_state   INTEGER NOT NULL CHECK (start_state BETWEEN 0 AND 8),
    end_state     INTEGER CHECK (end_state IS NULL OR end_state BETWEEN 0 AND 8),
    current_state INTEGER NOT NULL CHECK (current_state BETWEEN 0 AND 8),
    status        TEXT NOT NULL CHECK (status IN ('ACTIVE', 'COMPLETED', 'CANCELLED', 'FAULTED')),
    metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata) AND json_type(metadata) = 'object'),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    CHECK ((status = 'ACTIVE') = (end_time IS NULL)),
    CHECK ((end_time IS NULL) = (end_state IS NULL)),
    CHECK (end_time IS NULL OR end_time >= start_time)
) WITHOUT ROWID
"""

EVENTS_DDL = """
CREATE TABLE session_events (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES sessions (session_id) ON DELETE CASCADE,
    event_type TEXT NOT NULL CHECK (length(event_type) BETWEEN 1 AND 64),
    timestamp  INTEGER NOT NULL,
    event_data TEXT CHECK (event_data IS NULL OR json_valid(event_data))
)
"""

# Each index names the query it exists for (tests check EXPLAIN QUERY PLAN uses it).
INDEXES = (
    # list, newest first, no filter
    "CREATE INDEX idx_sessions_start_time ON sessions (start_time DESC)",
    # counts by status (stats)
    "CREATE INDEX idx_sessions_status ON sessions (status)",
    # ended_after/ended_before without status
    "CREATE INDEX idx_sessions_end_time ON sessions (end_time DESC)",
    # recently created (admin views)
    "CREATE INDEX idx_sessions_created_at ON sessions (created_at DESC)",
    # list filtered by status
    "CREATE INDEX idx_sessions_status_start ON sessions (status, start_time DESC)",
    # cleanup and ended-range queries by status
    "CREATE INDEX idx_sessions_status_end ON sessions (status, end_time DESC)",
    # a teacher's own sessions
    "CREATE INDEX idx_sessions_user_start ON sessions (user_id, start_time DESC)",
    # active sessions (students' listing)
    "CREATE INDEX idx_sessions_active ON sessions (start_time DESC) WHERE status = 'ACTIVE' AND end_time IS NULL",
    # events of one session in order
    "CREATE INDEX idx_events_session ON session_events (session_id, id)",
    # recent events
    "CREATE INDEX idx_events_timestamp ON session_events (timestamp DESC)",
    # stats: events per type
    "CREATE INDEX idx_events_type ON session_events (event_type)",
)

# Schema v1, in order: what a fresh database and the legacy conversion both create.
V1 = (SESSIONS_DDL, EVENTS_DDL, *INDEXES)

# Schema v2: the INACTIVE status (open, like ACTIVE: no end time). SQLite cannot alter a CHECK, so migration v2
# rebuilds both tables under temporary names (``{sessions}`` / ``{events}``) and renames them into place.
SESSIONS_V2_DDL = """
CREATE TABLE {sessions} (
    session_id    TEXT PRIMARY KEY NOT NULL,
    user_id       TEXT NOT NULL,
    start_time    INTEGER NOT NULL,
    end_time      INTEGER,
    start_state   INTEGER NOT NULL CHECK (start_state BETWEEN 0 AND 8),
    end_state     INTEGER CHECK (end_state IS NULL OR end_state BETWEEN 0 AND 8),
    current_state INTEGER NOT NULL CHECK (current_state BETWEEN 0 AND 8),
    status        TEXT NOT NULL CHECK (status IN ('ACTIVE', 'INACTIVE', 'COMPLETED', 'CANCELLED', 'FAULTED')),
    metadata      TEXT NOT NULL DEFAULT '{{}}' CHECK (json_valid(metadata) AND json_type(metadata) = 'object'),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    CHECK ((status IN ('ACTIVE', 'INACTIVE')) = (end_time IS NULL)),
    CHECK ((end_time IS NULL) = (end_state IS NULL)),
    CHECK (end_time IS NULL OR end_time >= start_time)
) WITHOUT ROWID
"""

EVENTS_V2_DDL = """
CREATE TABLE {events} (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    session_id TEXT NOT NULL REFERENCES {sessions} (session_id) ON DELETE CASCADE,
    event_type TEXT NOT NULL CHECK (length(event_type) BETWEEN 1 AND 64),
    timestamp  INTEGER NOT NULL,
    event_data TEXT CHECK (event_data IS NULL OR json_valid(event_data))
)
"""

# v2 keeps v1's indexes, statement for statement (the students' partial index still covers ACTIVE only).
V2_INDEXES = INDEXES

# Schema v2 created directly, in order: what the legacy conversion creates (its rows may be INACTIVE).
V2 = (
    SESSIONS_V2_DDL.format(sessions="sessions"),
    EVENTS_V2_DDL.format(events="session_events", sessions="sessions"),
    *V2_INDEXES,
)

# The schema the legacy conversion reads: the gateway this service replaces created exactly this table.
LEGACY_SESSIONS_DDL = """
CREATE TABLE IF NOT EXISTS sessions (
    session_id  TEXT PRIMARY KEY,
    start_time  TEXT,
    end_time    TEXT,
    start_state INTEGER,
    end_state   INTEGER,
    status      TEXT,
    events      TEXT,
    metadata    TEXT,
    created_at  TEXT,
    updated_at  TEXT
)
"""

# The markdown library (SPEC "Library and jobs"): a file belongs to its uploader; in the database so every worker
# and replica sees one library and a backup holds it. The bounds mirror ``service.library.models``.
LIBRARY_FILES_DDL = """
CREATE TABLE library_files (
    id         INTEGER PRIMARY KEY,
    owner_id   TEXT NOT NULL CHECK (length(owner_id) BETWEEN 1 AND 128),
    filename   TEXT NOT NULL CHECK (length(filename) BETWEEN 4 AND 200 AND filename LIKE '%.md'),
    content    TEXT NOT NULL,
    size_bytes INTEGER NOT NULL CHECK (size_bytes BETWEEN 1 AND 1073741824),
    created_at INTEGER NOT NULL,
    CHECK (length(CAST(content AS BLOB)) = size_bytes),
    UNIQUE (owner_id, filename)
)
"""

# Schema step "library": the table; its UNIQUE index serves an owner's listing and lookups by name, this one an
# admin's lookup of a name across owners.
LIBRARY_V1 = (LIBRARY_FILES_DDL, "CREATE INDEX idx_library_filename ON library_files (filename, id)")

# Durable ingestion jobs (SPEC "Library and jobs"): a job and its per-file progress live in the database, so a
# restart resumes it and a lease (``lease_owner``/``lease_until``, claimed in one write) makes it run exactly once
# however many processes share the file. ``files``: the library file ids and names chosen at creation;
# ``results``/``errors``: JSON arrays grown as each file finishes (a resumed job skips those).
INGESTION_JOBS_DDL = """
CREATE TABLE ingestion_jobs (
    job_id       TEXT PRIMARY KEY CHECK (length(job_id) BETWEEN 1 AND 64),
    owner_id     TEXT NOT NULL CHECK (length(owner_id) BETWEEN 1 AND 128),
    owner_role   TEXT NOT NULL CHECK (owner_role IN ('admin', 'teacher')),
    session_id   TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'completed_with_errors', 'failed')),
    params       TEXT NOT NULL CHECK (json_valid(params)),
    files        TEXT NOT NULL CHECK (json_valid(files) AND json_type(files) = 'array'),
    results      TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(results) AND json_type(results) = 'array'),
    errors       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(errors) AND json_type(errors) = 'array'),
    current_file TEXT,
    total_chunks INTEGER NOT NULL DEFAULT 0 CHECK (total_chunks >= 0),
    lease_owner  TEXT,
    lease_until  INTEGER,
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    created_at   INTEGER NOT NULL,
    started_at   INTEGER,
    completed_at INTEGER
)
"""

# Schema step "ingestion jobs": the table; the index serves the runner's search for claimable jobs.
INGESTION_JOBS_V1 = (
    INGESTION_JOBS_DDL,
    "CREATE INDEX idx_ingestion_jobs_claim ON ingestion_jobs (status, lease_until, created_at)",
)
