-- Every SELECT form of a continuous view, on the deterministic test backend.
CREATE TABLE papers (id INT PRIMARY KEY, title TEXT, abstract TEXT, year INT, venue TEXT)
  WITH (ttl = '30 days', expire = 'retract');
INSERT INTO papers VALUES
  (1, 'Streams', 'We index streaming joins over unbounded data.', 2021, 'VLDB'),
  (2, 'Cats', 'A survey of cat videos on the web.', 2019, NULL),
  (3, 'Logs', 'Log-structured merge trees for write-heavy databases.', 2023, 'SIGMOD'),
  (4, 'Vectors', 'Approximate nearest neighbour search with graphs.', 2022, 'NeurIPS');

-- A plain relational filter and a semantic filter, a map, a projection with a rename.
CREATE CONTINUOUS VIEW insights AS
  SELECT id, title AS name, SEM_MAP('State the key insight of {abstract}') AS insight
  FROM papers
  WHERE year >= 2021 AND venue IS NOT NULL AND SEM_FILTER('{abstract} is about database systems');
SELECT * FROM insights;

-- Extraction: two fields from one template cost one call per row.
CREATE CONTINUOUS VIEW facts AS
  SELECT id, SEM_EXTRACT('{abstract}', 'the technique') AS technique,
         SEM_EXTRACT('{abstract}', 'the kind of data') AS data
  FROM papers;
SELECT * FROM facts;

-- A view over a view: a digest of the insights.
CREATE CONTINUOUS VIEW digest AS SELECT SEM_AGG('Write a digest of these insights: {insight}') AS digest FROM insights;
SELECT * FROM digest;

-- One digest per venue, folding new rows in.
CREATE CONTINUOUS VIEW by_venue AS
  SELECT venue, SEM_AGG('Summarise {title}', fanout => 4) AS summary, num_rows FROM papers WHERE venue IS NOT NULL GROUP BY venue;
SELECT * FROM by_venue;

-- Top-k by pairwise comparisons, and a subquery under it.
CREATE CONTINUOUS VIEW boldest AS
  SELECT id, title, rank FROM papers ORDER BY SEM_RANK('{abstract} makes the boldest claim') LIMIT 2;
SELECT * FROM boldest;
CREATE CONTINUOUS VIEW recent_boldest AS
  SELECT * FROM (SELECT id, title, abstract FROM papers WHERE year > 2020) AS recent
  ORDER BY SEM_RANK('{abstract} makes the boldest claim') LIMIT 1;
SELECT * FROM recent_boldest;

-- A semantic join and a standing vector search.
CREATE TABLE venues (code TEXT PRIMARY KEY, topic TEXT);
INSERT INTO venues VALUES ('db', 'database systems'), ('ml', 'machine learning');
CREATE CONTINUOUS VIEW paper_topics AS
  SELECT p.id, p.title, v.code FROM papers AS p JOIN venues AS v
  ON SEM_MATCH('{abstract:left} is about {topic:right}') AND p.year > 2020;
SELECT * FROM paper_topics;
CREATE CONTINUOUS VIEW nearest AS SELECT id, title, score FROM SEM_SEARCH(papers, 'graph search for vectors', 2, 'abstract');
SELECT * FROM nearest;

-- Ad-hoc reads: WHERE, computed columns, ORDER BY, LIMIT, COUNT(*).
SELECT id, upper(title) AS loud, year + 1 AS next_year FROM papers WHERE title LIKE '%s' ORDER BY year DESC LIMIT 2;
SELECT count(*) FROM papers WHERE venue IS NULL;
EXPLAIN VIEW insights;
EXPLAIN VIEW paper_topics;
SHOW VIEWS;
SHOW USAGE;
