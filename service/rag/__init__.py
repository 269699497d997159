"""RAG gateway domain: settings precedence, question parsing, document ingestion; no HTTP here."""
