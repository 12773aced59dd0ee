-- Reports: an event's identity is its type, its subject and its id (see Envelope.identity in
-- libs/events/models.py). The same id sent for another user, another project or as another
-- type is another event, counted on its own in every service; copies with the same identity are
-- one event, counted once. The archive is keyed by that identity instead of the id alone.
--
-- `subject` is the event's partition key: the user for a user's own events, the project, group
-- or team for the directory and storage events keyed by them.
ALTER TABLE reports_events ADD COLUMN subject text COLLATE "C";
UPDATE reports_events SET subject = COALESCE(
    CASE type
        WHEN 'storage.sample.v1' THEN data->>'project_id'
        WHEN 'directory.project.v1' THEN data->>'project_id'
        WHEN 'directory.group.v1' THEN data->>'group_id'
        WHEN 'directory.team.v1' THEN data->>'team_id'
        ELSE user_id
    END, '');
ALTER TABLE reports_events ALTER COLUMN subject SET NOT NULL;
ALTER TABLE reports_events DROP CONSTRAINT reports_events_pkey;
ALTER TABLE reports_events ADD PRIMARY KEY (id, type, subject);
