-- A syntax error anywhere stops the script before its first statement runs.
CREATE TABLE docs (id TEXT PRIMARY KEY, text TEXT);
CREATE CONTINUOUS VIEW answers AS
LLM_GENERATE(
  PROMPT = 'Answer from the documents.'
  CONTEXT = STREAM(questions),
  DATA_SOURCE = STREAM(docs)
);
