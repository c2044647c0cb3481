"""Everything that speaks Kafka: clients, the bundled broker, codecs, bar messages,
ingest with its dead-letter path, the commands and promotions topics, and probes."""
