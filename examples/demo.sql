-- `make demo-sql`: part one of `deltamem demo`, in SQL. A view keeps the 2Wiki passages that describe a person and
-- says what each is known for; the passages then change (inserts, edits of the text the prompts read, edits of a
-- column they do not read, deletes, a re-insert), and deltamem redoes only the model calls each change needs.
-- Run it with `deltamem run demo-out/demo-sql.db examples/demo.sql` (add `--llm test` for the test backend). The TTL
-- expiry of `deltamem demo` is left out: it needs the simulated clock that only the Python API has.

-- Passages expire 30 days after their last write; `source` is a column no prompt reads.
CREATE TABLE passages (title TEXT PRIMARY KEY, text TEXT, source TEXT) WITH (ttl = '30 days');

-- Real data: the first 30 passages of the 2Wiki corpus in ../shared/data (a JSON array of {"title", "text"}).
-- The path is relative to this script's folder; titles are the key, and a repeated title would replace the earlier.
COPY passages FROM '../../shared/data/2wikimultihopqa/hipporag_corpus_6119.json' WITH (format = 'json', limit = 30);

-- The prompts of `deltamem demo`: one filter call per passage, one map call per passage that passes.
CREATE CONTINUOUS VIEW people AS
SELECT title, SEM_MAP('In at most eight words, say what {title} is known for. Passage: {text}', max_tokens => 24)
       AS known_for
FROM passages
WHERE SEM_FILTER('The passage below describes the life of a person (born, died, worked as ...).

{text}');

SELECT title, known_for FROM people ORDER BY title;

-- Tag every passage: `source` is read by no prompt, so the view costs nothing to refresh.
UPDATE passages SET source = '2wiki';

-- New passages: one filter call each, and one map call for each that passes.
INSERT INTO passages (title, text, source) VALUES
  ('Elliot Silverstein', 'Elliot Silverstein( born August 3, 1927, in Boston, Massachusetts) is an American director, who is best known for being the director of the movie" Cat Ballou"( 1965).', '2wiki'),
  ('Hartley Lobban', 'Hartley W Lobban (9 May 1926 – 15 October 2004) was a Jamaican-born first-class cricketer who played 17 matches for Worcestershire in the early 1950s.', '2wiki');
INSERT INTO passages (title, text, source) VALUES
  ('Charles Leavitt', 'Charles Leavitt( born 1953) is an American screenwriter best known for writing the 2006 film" Blood Diamond".', '2wiki'),
  ('Limestone Coast', 'The Limestone Coast is a name used since the early twenty- first century for a South Australian government region located in the south east of South Australia which immediately adjoins the continental coastline and the Victorian border.', '2wiki');

-- Edits of the text the prompts read: the filter and the map run again for those passages only.
UPDATE passages SET text = 'Teutberga( died 11 November 876) was a queen of Lotharingia by marriage to Lothair II. She was a daughter of Bosonid Boso the Elder and sister of Hucbert, the lay- abbot of St. Maurice''s Abbey.'
WHERE title = 'Teutberga';
UPDATE passages SET text = text || ' She was later recognised as a patron of the abbey.' WHERE title = 'Waldrada of Lotharingia';
UPDATE passages SET text = text || ' A restored print was released in 2012.' WHERE title IN ('Lloyd (film)', 'Empties');

-- Edits of the unread column: no model call.
UPDATE passages SET source = '2wiki-reviewed' WHERE title IN ('Astrid North', 'Billy Milano', 'Jim Bob');

-- Deletes retract what was derived from the rows, with no model call.
DELETE FROM passages WHERE title IN ('Caspar Babypants', 'Kristian Leontiou', 'Rakka (film)');

-- A re-insert of a deleted passage, as it was: its calls are answered from the memo, nothing is paid.
INSERT INTO passages (title, text, source) VALUES ('Caspar Babypants', 'Caspar Babypants is the stage name of children''s music artist Chris Ballew, who is also widely known as the singer of The Presidents of the United States of America.', '2wiki');

SELECT title, known_for FROM people ORDER BY title;
-- Every version is kept: Teutberga's row before and after its edit.
SELECT title, known_for FROM people AS OF VERSION 3 WHERE title = 'Teutberga';
SELECT title, known_for FROM people WHERE title = 'Teutberga';
EXPLAIN VIEW people;
EXPLAIN VIEW people KEY 'Teutberga';
SHOW USAGE;
