-- Console sessions: the server side of the signed session cookie.
--
-- The cookie holds a random session id, its expiry and a signature; this table holds only the
-- id's SHA-256 digest (a copy of the table never yields a usable cookie), who signed in and
-- whether the session has ended. Signing out sets `ended_at`, which every reports replica
-- sees on the next request. Rows past their expiry are deleted by the service now and then.
CREATE TABLE console_sessions (
    id_digest          bytea PRIMARY KEY,
    role               text        NOT NULL CHECK (role IN ('admin', 'emitter', 'portal')),
    token_fingerprint  bytea,               -- which configured token signed in (admin/emitter)
    portal_user_id     text,                -- portal sessions: the one user they may read
    portal_generation  bigint,              -- the user's revocation generation at sign-in
    created_at         timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    ended_at           timestamptz
);
CREATE INDEX console_sessions_expiry ON console_sessions (expires_at);
