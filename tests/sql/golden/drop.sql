-- DROP: IF EXISTS skips, CASCADE drops the views that read what is dropped, a dropped name is created again from
-- scratch, a stream's sequence starts over; RESTRICT (the default) names the dependents and changes nothing.
CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT);
INSERT INTO notes VALUES ('a', 'Buy milk and eggs'), ('b', 'Call the plumber');
CREATE CONTINUOUS VIEW gists AS SELECT id, SEM_MAP('Summarise {body}') AS gist FROM notes;
CREATE CONTINUOUS VIEW picked AS SELECT id, gist FROM gists WHERE id = 'a';
SELECT * FROM picked;
DROP VIEW IF EXISTS nothing_here;
DROP CONTINUOUS VIEW picked;
DROP VIEW gists;
SHOW VIEWS;
CREATE CONTINUOUS VIEW gists AS SELECT id, SEM_MAP('Name the topic of {body}') AS gist FROM notes;
CREATE CONTINUOUS VIEW picked AS SELECT id, gist FROM gists WHERE id = 'b';
SELECT * FROM gists;
SELECT * FROM picked;
DROP TABLE IF EXISTS notes, nothing_here CASCADE;
SHOW TABLES;
SHOW VIEWS;
SHOW USAGE;
CREATE STREAM clicks (page TEXT);
INSERT INTO clicks (page) VALUES ('/home'), ('/docs');
DROP STREAM clicks;
CREATE STREAM clicks (page TEXT, ms INT);
INSERT INTO clicks (page, ms) VALUES ('/about', 12);
CREATE CONTINUOUS VIEW slow AS SELECT seq, page FROM clicks WHERE ms > 10;
SELECT * FROM slow;
DROP STREAM clicks RESTRICT;
SELECT 'never reached' FROM clicks;
