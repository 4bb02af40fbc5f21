-- COPY t FROM 'file': relative to this script's folder; one version per file; a repeated key is counted, not silent.
CREATE TABLE people (title TEXT PRIMARY KEY, text TEXT, source TEXT) WITH (ttl = '30 days');
CREATE CONTINUOUS VIEW known AS SELECT title, SEM_MAP('Say what {title} is known for: {text}') AS known_for FROM people;
COPY people FROM 'data/people.json' WITH (format = 'json', limit = 2);
SELECT * FROM known;
COPY people FROM 'data/people.json' WITH (format = 'json');
SELECT title, text FROM people;
SUBSCRIBE TO known AS OF VERSION 2;
CREATE STREAM clicks (page TEXT, ms INT);
COPY clicks FROM 'data/clicks.csv' WITH (FORMAT csv, HEADER true);
COPY clicks FROM 'data/clicks.csv' WITH (format = 'csv', limit = 1);
SELECT * FROM clicks;
SHOW USAGE;
COPY people FROM 'data/people.json' WITH (format = 'jsn');
