-- Schema 010: the content repository's metadata. The bytes are files named by their
-- SHA-256 under the media directory (see fedserver/handlers/media/files.py); rows refer to
-- them by that hash, so identical content is stored once and no id ever becomes a path.

-- Media of our users. A row made by POST /create has no content yet (sha256 NULL) until
-- PUT /upload, and expires at unused_expires_ts if it gets none.
CREATE TABLE local_media (
    media_id TEXT NOT NULL PRIMARY KEY,
    user_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    unused_expires_ts BIGINT,
    upload_ts BIGINT,
    content_type TEXT,
    upload_name TEXT,
    media_length BIGINT,
    sha256 TEXT,
    last_access_ts BIGINT NOT NULL
);
CREATE INDEX local_media_user ON local_media (user_id);
CREATE INDEX local_media_sha256 ON local_media (sha256);

-- Media of other servers, cached when one of our users first asked for it. created_ts is
-- when the cache was filled (the spec's "freeze" counts re-downloads as new media).
CREATE TABLE remote_media (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    content_type TEXT NOT NULL,
    upload_name TEXT,
    media_length BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    last_access_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id)
);
CREATE INDEX remote_media_access ON remote_media (last_access_ts);
CREATE INDEX remote_media_sha256 ON remote_media (sha256);

-- Thumbnails made on demand, of local (server_name = our name) or cached remote media,
-- keyed by the size and method they were made for.
CREATE TABLE media_thumbnails (
    server_name TEXT NOT NULL,
    media_id TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    method TEXT NOT NULL,
    animated INTEGER NOT NULL,
    content_type TEXT NOT NULL,
    media_length BIGINT NOT NULL,
    sha256 TEXT NOT NULL,
    created_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, media_id, width, height, method, animated)
);
CREATE INDEX media_thumbnails_sha256 ON media_thumbnails (sha256);
