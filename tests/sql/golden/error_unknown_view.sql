CREATE TABLE papers (id INT PRIMARY KEY, abstract TEXT);
INSERT INTO papers VALUES (1, 'A new index for streaming joins.');
CREATE CONTINUOUS VIEW insights AS SELECT id, SEM_MAP('State the key insight of {abstract}') AS insight FROM papers;
SELECT * FROM insight;
SELECT 'never reached' FROM papers;
