CREATE TABLE papers (id INT PRIMARY KEY, abstract TEXT, year INT);
CREATE CONTINUOUS VIEW recent AS SELECT * FROM papers WHERE SEM_FILTER('{abstrct} is about databases');
