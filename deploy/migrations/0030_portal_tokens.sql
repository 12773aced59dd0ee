-- Portal tokens: a revocation generation per user, read by every service that accepts them.
--
-- A portal token carries the generation its user had when it was minted; revoking a user's
-- tokens raises the generation, so every token minted before is refused. Each replica keeps
-- the table in memory and reads only rows whose `version` grew since its last look (a few
-- times a second), which is how a revocation reaches every replica within a second.
CREATE SEQUENCE portal_token_revocations_version;

CREATE TABLE portal_token_revocations (
    user_id     text PRIMARY KEY,
    generation  bigint      NOT NULL,
    version     bigint      NOT NULL DEFAULT nextval('portal_token_revocations_version'),
    revoked_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX portal_token_revocations_by_version ON portal_token_revocations (version);
