-- Versions, AS OF and SUBSCRIBE after inserts, updates and deletes (a stream keyed by an implicit sequence, too).
CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT, pinned BOOLEAN);
INSERT INTO notes VALUES ('a', 'Buy milk and eggs', false), ('b', 'Call the plumber about the leak', true);
CREATE CONTINUOUS VIEW gists AS SELECT id, SEM_MAP('Summarise {body}') AS gist FROM notes WHERE pinned OR body LIKE 'Buy%';
SELECT * FROM gists;
INSERT INTO notes VALUES ('c', 'Buy a birthday present', false);
UPDATE notes SET body = 'Buy oat milk' WHERE id = 'a';
UPDATE notes SET pinned = false WHERE id = 'b';
DELETE FROM notes WHERE id = 'c';
INSERT INTO notes VALUES ('a', 'duplicate', false) ON CONFLICT DO NOTHING;
SELECT * FROM gists;
SELECT * FROM gists AS OF VERSION 3;
SELECT * FROM gists AS OF VERSION 4;
SUBSCRIBE TO gists AS OF VERSION 2;
SUBSCRIBE gists;

CREATE STREAM clicks (page TEXT, ms INT);
INSERT INTO clicks (page, ms) VALUES ('/home', 120), ('/docs', 340);
INSERT INTO clicks VALUES ('/home', 95);
SELECT * FROM clicks ORDER BY seq;
CREATE CONTINUOUS VIEW slow AS SELECT seq, page FROM clicks WHERE ms > 100;
SELECT * FROM slow;
DELETE FROM clicks WHERE page = '/docs';
UPDATE clicks SET ms = ms * 2 WHERE seq = 3;
SUBSCRIBE TO slow AS OF VERSION 9;
SHOW TABLES;
