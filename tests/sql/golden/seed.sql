-- The seed statement of issue 5, verbatim, over a conversation stream and a stream of support documents.
CREATE STREAM conversation_events (user_id TEXT, message TEXT);
CREATE STREAM support_docs_or_events (title TEXT, text TEXT);
INSERT INTO support_docs_or_events (title, text) VALUES
  ('Refunds', 'Refunds are issued within 14 days of a return.'),
  ('Shipping', 'Standard shipping takes 3 to 5 business days.');
INSERT INTO conversation_events (user_id, message) VALUES ('u1', 'How long do refunds take?');

CREATE CONTINUOUS VIEW response_stream AS
LLM_GENERATE(
PROMPT="Given conversation context and support docs, generate a helpful response.",
CONTEXT=STREAM(conversation_events), -- user interactions, updates incrementally
DATA_SOURCE=STREAM(support_docs_or_events) -- knowledge updates streamed incrementally
);
SELECT * FROM response_stream;

-- The same view with single quotes, options in WITH (...), and retrieval of the 1 most similar sentence.
CREATE CONTINUOUS VIEW response_stream_2 AS
LLM_GENERATE(
  PROMPT = 'Given conversation context and support docs, generate a helpful response.',
  CONTEXT = STREAM(conversation_events),
  DATA_SOURCE = STREAM(support_docs_or_events)
) WITH (strategy = 'auto', retrieve = 1, refresh = 'on_change');
SELECT * FROM response_stream_2;

-- A new message is answered; an edit of the refund policy refreshes the answer that read it.
INSERT INTO conversation_events (user_id, message) VALUES ('u2', 'When will my parcel arrive?');
UPDATE support_docs_or_events SET text = 'Refunds are issued within 30 days of a return.' WHERE title = 'Refunds';
SELECT seq, user_id, answer FROM response_stream_2;
SUBSCRIBE TO response_stream_2 AS OF VERSION 4;
EXPLAIN VIEW response_stream_2 KEY 1;
SHOW TABLES;
SHOW VIEWS;
