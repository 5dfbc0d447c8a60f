/// The catalog schema, as numbered migrations. Each runs once, in order, in
/// its own transaction; applied numbers are kept in `schema_migrations`.
/// Append new migrations; never edit a released one.
enum Migrations {
    static let all: [(version: Int, sql: String)] = [
        (1, """
        CREATE FUNCTION unix_ms(timestamptz) RETURNS bigint LANGUAGE sql IMMUTABLE
            AS $$ SELECT (extract(epoch FROM $1) * 1000)::bigint $$;

        CREATE TABLE namespaces (
            name        text PRIMARY KEY,
            created_at  timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE environments (
            id               bigserial PRIMARY KEY,
            namespace        text NOT NULL REFERENCES namespaces(name),
            name             text NOT NULL,
            app              text NOT NULL,
            database_url     text NOT NULL,
            file_store_path  text NOT NULL,
            file_query       text NOT NULL,
            package_version  text NOT NULL DEFAULT '',
            state            text NOT NULL CHECK (state IN ('running', 'stopped')),
            created_at       timestamptz NOT NULL DEFAULT now(),
            UNIQUE (namespace, name)
        );

        -- Content in the blob store, by SHA-256. A row exists for every blob a
        -- snapshot refers to; unreferenced rows are removed by garbage collection.
        CREATE TABLE blobs (
            sha256      text PRIMARY KEY,
            size        bigint NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE snapshots (
            id                uuid PRIMARY KEY,
            seq               bigserial UNIQUE,
            environment_id    bigint NOT NULL REFERENCES environments(id),
            status            text NOT NULL CHECK (status IN ('processing', 'failed', 'finished')),
            kind              text NOT NULL CHECK (kind IN ('on-demand', 'nightly', 'weekly', 'monthly', 'uploaded')),
            comment           text NOT NULL DEFAULT '',
            package_version   text NOT NULL DEFAULT '',
            created_at        timestamptz NOT NULL DEFAULT now(),
            finished_at       timestamptz,
            expires_at        timestamptz,
            dump_sha256       text REFERENCES blobs(sha256),
            database_bytes    bigint NOT NULL DEFAULT 0,
            files_bytes       bigint NOT NULL DEFAULT 0,
            file_count        bigint NOT NULL DEFAULT 0,
            postgres_version  text NOT NULL DEFAULT '',
            error             text NOT NULL DEFAULT '',
            job_id            uuid
        );
        CREATE INDEX snapshots_by_environment ON snapshots (environment_id, seq DESC);

        -- The file manifest of a snapshot: which storage key holds which blob.
        CREATE TABLE snapshot_files (
            snapshot_id  uuid NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
            storage_key  text NOT NULL,
            sha256       text NOT NULL REFERENCES blobs(sha256),
            size         bigint NOT NULL,
            PRIMARY KEY (snapshot_id, storage_key)
        );
        CREATE INDEX snapshot_files_by_blob ON snapshot_files (sha256);

        CREATE TABLE jobs (
            id                uuid PRIMARY KEY,
            kind              text NOT NULL,
            status            text NOT NULL CHECK (status IN ('queued', 'running', 'finished', 'failed')),
            environment_id    bigint NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
            snapshot_id       uuid,
            actor             text NOT NULL DEFAULT '',
            bytes_done        bigint NOT NULL DEFAULT 0,
            bytes_total       bigint NOT NULL DEFAULT 0,
            phase             text NOT NULL DEFAULT '',
            error             text NOT NULL DEFAULT '',
            lease_owner       text,
            lease_expires_at  timestamptz,
            created_at        timestamptz NOT NULL DEFAULT now(),
            started_at        timestamptz,
            finished_at       timestamptz
        );
        -- One job at a time per environment, enforced by the database itself.
        CREATE UNIQUE INDEX jobs_one_active_per_environment ON jobs (environment_id)
            WHERE status IN ('queued', 'running');
        CREATE INDEX jobs_queued ON jobs (created_at) WHERE status = 'queued';

        -- Names, not keys: the log outlives the environments it speaks of.
        CREATE TABLE activity (
            id           bigserial PRIMARY KEY,
            at           timestamptz NOT NULL DEFAULT now(),
            namespace    text NOT NULL,
            environment  text NOT NULL,
            action       text NOT NULL,
            outcome      text NOT NULL,
            actor        text NOT NULL DEFAULT '',
            snapshot_id  uuid,
            detail       text NOT NULL DEFAULT ''
        );
        CREATE INDEX activity_by_environment ON activity (namespace, environment, id DESC);

        CREATE TABLE tokens (
            id             uuid PRIMARY KEY,
            name           text NOT NULL,
            namespace      text NOT NULL REFERENCES namespaces(name),
            role           text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
            secret_sha256  text NOT NULL UNIQUE,
            created_at     timestamptz NOT NULL DEFAULT now(),
            revoked_at     timestamptz
        );
        """),
        (2, """
        -- The plan of a restore, written before anything is created, so a
        -- process that dies mid-restore leaves enough to clean up or finish.
        CREATE TABLE restores (
            job_id             uuid PRIMARY KEY REFERENCES jobs(id) ON DELETE CASCADE,
            snapshot_id        uuid NOT NULL,
            database_only      boolean NOT NULL,
            target_database    text NOT NULL DEFAULT '',
            staging_database   text NOT NULL DEFAULT '',
            previous_database  text NOT NULL DEFAULT '',
            file_store         text NOT NULL DEFAULT '',
            staging_folder     text NOT NULL DEFAULT '',
            previous_folder    text NOT NULL DEFAULT '',
            swap_started       boolean NOT NULL DEFAULT false
        );
        -- pg_database_size of the app database when it was dumped: how big a restore will grow.
        ALTER TABLE snapshots ADD COLUMN source_database_bytes bigint NOT NULL DEFAULT 0;
        """),
        (3, """
        -- Platform tokens belong to the service that places apps, not to a namespace.
        ALTER TABLE tokens ALTER COLUMN namespace DROP NOT NULL;
        ALTER TABLE tokens DROP CONSTRAINT tokens_role_check;
        ALTER TABLE tokens ADD CONSTRAINT tokens_role_check CHECK (role IN ('viewer', 'operator', 'admin', 'platform'));
        ALTER TABLE tokens ADD CONSTRAINT tokens_platform_has_no_namespace CHECK ((role = 'platform') = (namespace IS NULL));
        """),
        (4, """
        -- Live backups: files whose rows went away, or that changed, while the backup ran.
        ALTER TABLE snapshots ADD COLUMN files_deleted_during_backup bigint NOT NULL DEFAULT 0,
            ADD COLUMN files_changed_during_backup bigint NOT NULL DEFAULT 0,
            ADD COLUMN warning text NOT NULL DEFAULT '';
        -- Jobs can be cancelled: asked for by a flag the running process watches.
        ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;
        ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
            CHECK (status IN ('queued', 'running', 'finished', 'failed', 'cancelled'));
        ALTER TABLE jobs ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;
        """),
        (5, """
        -- A restore records each step it reaches (RestoreStep), not only whether its swap began.
        ALTER TABLE restores ADD COLUMN step text NOT NULL DEFAULT 'planned';
        UPDATE restores SET step = 'swap-recorded' WHERE swap_started;
        ALTER TABLE restores DROP COLUMN swap_started;
        -- Claims look at the jobs started in the last day to let namespaces take turns.
        CREATE INDEX jobs_started ON jobs (started_at);
        """),
        (6, """
        -- Watchers of a job hear of a change the moment it commits (LISTEN job_changed), not at their next reading.
        -- Lease renewals change nothing a watcher sees, and stay quiet.
        CREATE FUNCTION notify_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('job_changed', NEW.id::text);
            RETURN NULL;
        END
        $$;
        CREATE TRIGGER jobs_notify_changed AFTER UPDATE ON jobs FOR EACH ROW
            WHEN ((OLD.status, OLD.phase, OLD.bytes_done, OLD.bytes_total, OLD.error, OLD.cancel_requested)
                  IS DISTINCT FROM (NEW.status, NEW.phase, NEW.bytes_done, NEW.bytes_total, NEW.error, NEW.cancel_requested))
            EXECUTE FUNCTION notify_job_changed();
        """),
        (7, """
        -- Archives prepared for download: at most one per backup and kind at a time (failed ones aside), shared
        -- by every request for it. While preparing, size is what the archive may grow to, reserved in the cache.
        CREATE TABLE archives (
            id             uuid PRIMARY KEY,
            snapshot_id    uuid NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
            database_only  boolean NOT NULL,
            job_id         uuid NOT NULL UNIQUE,
            state          text NOT NULL CHECK (state IN ('preparing', 'ready', 'failed')),
            size           bigint NOT NULL,
            sha256         text NOT NULL DEFAULT '',
            error          text NOT NULL DEFAULT '',
            created_at     timestamptz NOT NULL DEFAULT now(),
            ready_at       timestamptz
        );
        CREATE UNIQUE INDEX archives_one_per_backup_and_kind ON archives (snapshot_id, database_only) WHERE state <> 'failed';
        -- Each request for an archive: who asked, and when its URL expires (counted from when the archive is ready).
        CREATE TABLE downloads (
            id          uuid PRIMARY KEY,
            archive_id  uuid NOT NULL REFERENCES archives(id) ON DELETE CASCADE,
            actor       text NOT NULL,
            lifetime    interval NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz
        );
        CREATE INDEX downloads_by_archive ON downloads (archive_id);
        -- Preparing an archive reads only the blob store: it does not take its environment's one job at a time.
        DROP INDEX jobs_one_active_per_environment;
        CREATE UNIQUE INDEX jobs_one_active_per_environment ON jobs (environment_id)
            WHERE status IN ('queued', 'running') AND kind <> 'archive';
        """),
        (8, """
        -- Archives uploaded from elsewhere, received in chunks from bytes received on. An upload that receives
        -- nothing until expires_at is abandoned: its data is removed.
        CREATE TABLE uploads (
            id              uuid PRIMARY KEY,
            environment_id  bigint NOT NULL REFERENCES environments(id) ON DELETE CASCADE,
            filename        text NOT NULL DEFAULT '',
            comment         text NOT NULL DEFAULT '',
            size            bigint NOT NULL CHECK (size > 0),
            sha256          text NOT NULL,
            received        bigint NOT NULL DEFAULT 0 CHECK (received BETWEEN 0 AND size),
            state           text NOT NULL CHECK (state IN ('receiving', 'validating', 'finished', 'failed', 'expired')),
            job_id          uuid,
            snapshot_id     uuid,
            error           text NOT NULL DEFAULT '',
            actor           text NOT NULL,
            created_at      timestamptz NOT NULL DEFAULT now(),
            expires_at      timestamptz NOT NULL,
            -- The one call, in any process, that writes its chunks now, until its lease runs out.
            writer          text,
            writer_until    timestamptz
        );
        CREATE INDEX uploads_receiving ON uploads (expires_at) WHERE state = 'receiving';
        """),
        (9, """
        -- Validating an upload reads its spool file and writes only the blob store and a new backup: like preparing
        -- an archive, it does not take its environment's one job at a time.
        DROP INDEX jobs_one_active_per_environment;
        CREATE UNIQUE INDEX jobs_one_active_per_environment ON jobs (environment_id)
            WHERE status IN ('queued', 'running') AND kind NOT IN ('archive', 'upload-validation');
        CREATE UNIQUE INDEX uploads_by_job ON uploads (job_id);
        """),
        (10, """
        -- Each environment's automatic backups: when (minutes after local midnight, in an IANA zone) and how long each
        -- kind is kept (0: the default). An environment without a row has the defaults: enabled, 00:00 UTC.
        CREATE TABLE schedules (
            environment_id  bigint PRIMARY KEY REFERENCES environments(id) ON DELETE CASCADE,
            enabled         boolean NOT NULL,
            window_start    integer NOT NULL CHECK (window_start BETWEEN 0 AND 1439),
            time_zone       text NOT NULL,
            nightly_days    integer NOT NULL CHECK (nightly_days >= 0),
            weekly_months   integer NOT NULL CHECK (weekly_months >= 0),
            monthly_months  integer NOT NULL CHECK (monthly_months >= 0),
            on_demand_days  integer NOT NULL CHECK (on_demand_days >= 0),
            uploaded_days   integer NOT NULL CHECK (uploaded_days >= 0),
            verify_nightly  boolean NOT NULL
        );
        -- The night (local date of its window) an automatic backup was made for. One backup per environment and
        -- night that did not fail, whichever process made it; failed attempts of a night are its retries.
        ALTER TABLE snapshots ADD COLUMN night date;
        CREATE UNIQUE INDEX snapshots_one_per_night ON snapshots (environment_id, night) WHERE night IS NOT NULL AND status <> 'failed';
        CREATE INDEX snapshots_expiring ON snapshots (expires_at) WHERE status <> 'processing';
        -- The last verification of a backup: when, by which job, and what it found (at most 100 problems kept).
        ALTER TABLE snapshots ADD COLUMN verified_at timestamptz, ADD COLUMN verify_job_id uuid,
            ADD COLUMN verify_problem_count integer NOT NULL DEFAULT 0, ADD COLUMN verify_problems jsonb NOT NULL DEFAULT '[]';
        -- Verifying reads only the blob store: it does not take its environment's one job at a time.
        DROP INDEX jobs_one_active_per_environment;
        CREATE UNIQUE INDEX jobs_one_active_per_environment ON jobs (environment_id)
            WHERE status IN ('queued', 'running') AND kind NOT IN ('archive', 'upload-validation', 'verify');
        """),
        (11, """
        -- A dump stored as content-defined chunks, in order: each chunk's content hash and size, and the blob that
        -- holds it (zstd-compressed, or as is). A snapshot without rows here has its dump in one blob, dump_sha256.
        CREATE TABLE dump_chunks (
            snapshot_id  uuid NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
            position     integer NOT NULL,
            sha256       text NOT NULL,
            size         bigint NOT NULL,
            blob_sha256  text NOT NULL REFERENCES blobs(sha256),
            compressed   boolean NOT NULL,
            PRIMARY KEY (snapshot_id, position)
        );
        CREATE INDEX dump_chunks_by_blob ON dump_chunks (blob_sha256);
        -- dump_sha256 is now the hash of the whole dump, a blob only for dumps stored whole.
        ALTER TABLE snapshots DROP CONSTRAINT snapshots_dump_sha256_fkey;
        """),
        (12, """
        -- Listing an environment's backups of one kind or status, newest first, without reading the others.
        CREATE INDEX snapshots_by_environment_kind ON snapshots (environment_id, kind, seq DESC);
        CREATE INDEX snapshots_by_environment_status ON snapshots (environment_id, status, seq DESC);
        """),
        (13, """
        -- A restore no longer drops the previous copies before the swap: the swap renames them aside (superseded)
        -- and they are dropped once the restored copies are in place.
        ALTER TABLE restores ADD COLUMN superseded_database text NOT NULL DEFAULT '',
            ADD COLUMN superseded_folder text NOT NULL DEFAULT '';
        -- What a restore may have left on its environment's database server and beside its file store (staging and
        -- superseded copies): set when it plans, cleared once they are gone. A sweep retries, with back-off, the
        -- restores that no longer run.
        ALTER TABLE restores ADD COLUMN leftovers boolean NOT NULL DEFAULT false,
            ADD COLUMN leftover_attempts integer NOT NULL DEFAULT 0,
            ADD COLUMN leftovers_next_try timestamptz NOT NULL DEFAULT now();
        CREATE INDEX restores_with_leftovers ON restores (leftovers_next_try) WHERE leftovers;
        -- Restores that ended before this version may have left a staging database when their clean-up failed.
        UPDATE restores r SET leftovers = true FROM jobs j
            WHERE j.id = r.job_id AND j.status IN ('failed', 'cancelled') AND r.staging_database <> '';
        """),
        (14, """
        -- An upload can be given up (AbandonUpload). One that receives too little over a window expires even while
        -- something trickles in: each window starts with what was received by then.
        ALTER TABLE uploads DROP CONSTRAINT uploads_state_check;
        ALTER TABLE uploads ADD CONSTRAINT uploads_state_check
            CHECK (state IN ('receiving', 'validating', 'finished', 'failed', 'expired', 'abandoned'));
        ALTER TABLE uploads ADD COLUMN window_started_at timestamptz NOT NULL DEFAULT now(),
            ADD COLUMN window_received bigint NOT NULL DEFAULT 0;
        """),
        (15, """
        -- Collection runs beside jobs: a blob used (stored or reused, as a job's ledger records it) since the oldest
        -- running job began is kept.
        ALTER TABLE blobs ADD COLUMN used_at timestamptz NOT NULL DEFAULT now();
        """),
        (16, """
        -- The staging database's oid once it is made: the database swap committed exactly when the target's name
        -- belongs to it (whatever else happened to the names meanwhile).
        ALTER TABLE restores ADD COLUMN staging_oid bigint;
        """),
        (17, """
        -- Collection claims the rows of the blobs it removes (collecting_since) and holds no connection while the
        -- store removes them; a job that marks a claimed blob used takes it as gone.
        ALTER TABLE blobs ADD COLUMN collecting_since timestamptz;
        CREATE INDEX blobs_being_collected ON blobs (collecting_since) WHERE collecting_since IS NOT NULL;
        """),
        (18, """
        -- A ready archive is a blob of the blob store, under its sha256, which every process serves. Those made
        -- ready before were files of one process's archive cache: they are forgotten (their links answer 404), and
        -- asking for the download again prepares it anew.
        DELETE FROM archives WHERE state = 'ready';
        CREATE INDEX archives_by_content ON archives (sha256) WHERE state = 'ready';
        """),
        (19, """
        -- What an upload has received is a run of segments, blobs of the blob store (one per counted batch), so that
        -- any process resumes or validates it. Uploads received into one process's spool before cannot be resumed.
        CREATE TABLE upload_segments (
            upload_id   uuid NOT NULL REFERENCES uploads(id) ON DELETE CASCADE,
            first_byte  bigint NOT NULL,
            size        bigint NOT NULL CHECK (size > 0),
            sha256      text NOT NULL,
            PRIMARY KEY (upload_id, first_byte)
        );
        CREATE INDEX upload_segments_by_content ON upload_segments (sha256);
        UPDATE uploads SET state = 'failed', error = 'received before backupd kept uploads in its blob store; upload the archive again'
            WHERE state = 'receiving' AND received > 0;
        """),
        (20, """
        -- The request id of the call that queued a job (empty for the scheduler's), carried into the job's log lines.
        ALTER TABLE jobs ADD COLUMN request_id text NOT NULL DEFAULT '';
        """),
        (21, """
        -- Downloads whose archive went once every link of it had expired: an expired link tried later still names
        -- its namespace, so the fetch is recorded there. Kept 90 days.
        CREATE TABLE expired_downloads (
            id           uuid PRIMARY KEY,
            namespace    text NOT NULL,
            environment  text NOT NULL,
            snapshot_id  uuid NOT NULL,
            actor        text NOT NULL,
            expired_at   timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX expired_downloads_by_age ON expired_downloads (expired_at);
        -- The hour's count of a download's recorded fetches reads the environment's last hour of downloads only.
        CREATE INDEX activity_downloads_by_time ON activity (namespace, environment, at) WHERE action = 'download';
        """),
        (22, """
        -- Each namespace's data key, wrapped (RFC 3394) by the master key key_id of the storage key file: what the
        -- namespace's blobs are addressed and encrypted with. Without its row, a namespace's blobs are unreadable.
        CREATE TABLE namespace_keys (
            namespace   text PRIMARY KEY,
            key_id      text NOT NULL,
            wrapped     text NOT NULL,
            created_at  timestamptz NOT NULL DEFAULT now(),
            wrapped_at  timestamptz NOT NULL DEFAULT now()
        );
        -- Where each referenced blob is kept, which blobs.sha256 names: the content's hash for content kept as is,
        -- the namespace's address of that hash for content kept encrypted. The sha256 columns stay the content's.
        ALTER TABLE snapshot_files ADD COLUMN blob text;
        UPDATE snapshot_files SET blob = sha256;
        ALTER TABLE snapshot_files ALTER COLUMN blob SET NOT NULL, DROP CONSTRAINT snapshot_files_sha256_fkey,
            ADD CONSTRAINT snapshot_files_blob_fkey FOREIGN KEY (blob) REFERENCES blobs(sha256);
        DROP INDEX snapshot_files_by_blob;
        CREATE INDEX snapshot_files_by_blob ON snapshot_files (blob);
        ALTER TABLE dump_chunks ADD COLUMN blob text;
        UPDATE dump_chunks SET blob = blob_sha256;
        ALTER TABLE dump_chunks ALTER COLUMN blob SET NOT NULL, DROP CONSTRAINT dump_chunks_blob_sha256_fkey,
            ADD CONSTRAINT dump_chunks_blob_fkey FOREIGN KEY (blob) REFERENCES blobs(sha256);
        DROP INDEX dump_chunks_by_blob;
        CREATE INDEX dump_chunks_by_blob ON dump_chunks (blob);
        ALTER TABLE archives ADD COLUMN blob text NOT NULL DEFAULT '';
        UPDATE archives SET blob = sha256 WHERE state = 'ready';
        DROP INDEX archives_by_content;
        CREATE INDEX archives_by_blob ON archives (blob) WHERE state = 'ready';
        ALTER TABLE upload_segments ADD COLUMN blob text;
        UPDATE upload_segments SET blob = sha256;
        ALTER TABLE upload_segments ALTER COLUMN blob SET NOT NULL;
        DROP INDEX upload_segments_by_content;
        CREATE INDEX upload_segments_by_blob ON upload_segments (blob);
        """),
        (23, """
        -- Object lock: until when the store retains each object (no collection before then: the store would refuse),
        -- and for each backup the date its objects were last retained until and when that was last tried (a backup
        -- that failed goes behind the others).
        ALTER TABLE blobs ADD COLUMN retain_until timestamptz;
        ALTER TABLE snapshots ADD COLUMN retained_until timestamptz, ADD COLUMN retention_tried_at timestamptz;
        CREATE INDEX snapshots_to_retain ON snapshots (retention_tried_at NULLS FIRST, finished_at)
            WHERE status = 'finished' AND expires_at IS NOT NULL;
        -- Work outside jobs that stores blobs (backupd store migrate) holds collection back as a running job does:
        -- nothing used since a fence's start is collected while it lasts.
        CREATE TABLE collection_fences (
            id     uuid PRIMARY KEY,
            since  timestamptz NOT NULL DEFAULT now(),
            until  timestamptz NOT NULL
        );
        """),
        (24, """
        -- Work of which one runs at a time (backupd store migrate) names itself: a second run's fence is refused
        -- while the first one's lasts (helper finding: two runs copied the same objects twice and counted them twice).
        ALTER TABLE collection_fences ADD COLUMN holder text UNIQUE;
        """),
    ]
}
