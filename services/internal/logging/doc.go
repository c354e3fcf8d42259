// Package logging builds the structured logger every shardflow service uses.
//
// Records are JSON lines (log/slog's JSON handler) carrying the service name
// and, when the record's context holds a valid OpenTelemetry span context,
// its trace_id and span_id, so a log line can be joined with its trace in
// Jaeger. The ids are always top-level keys, also under [slog.Logger.WithGroup].
//
// Log with the context-taking methods (InfoContext, ErrorContext, ...) so the
// ids can be found:
//
//	log := logging.New(os.Stderr, slog.LevelInfo, "ingest")
//	log.InfoContext(ctx, "published", "subject", subj)
package logging
