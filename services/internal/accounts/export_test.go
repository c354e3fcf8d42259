package accounts

// SetAfterShardRowsDeleted sets a hook called by the saga right after an
// account's rows are deleted (and the receipt written) in its shard's
// database, before the main database records the step: an error stops the
// saga there, as a crash between the two databases' commits would.
func SetAfterShardRowsDeleted(s *Service, f func(step string) error) {
	s.afterShardRowsDeleted = f
}
