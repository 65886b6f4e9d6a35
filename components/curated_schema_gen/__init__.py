"""CuratedSchemaGen: TFX's ImportSchemaGen whose cache key includes the code's fingerprint."""
