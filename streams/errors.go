package streams

import (
	"errors"
	"fmt"
)

// Sentinel errors. Test for them with errors.Is; the wrapped message carries
// the specifics (which account, which limit).
var (
	// ErrInvalidAccountID is returned for an account id that is not a
	// subject-safe token.
	ErrInvalidAccountID = errors.New("invalid account id")
	// ErrTooLarge is returned when a message (payload plus headers) is over the
	// configured maximum message size. The error is a *SizeError.
	ErrTooLarge = errors.New("message too large")
	// ErrLimitMismatch is returned at start-up when the server's max_payload or
	// a stream's max_msg_size cannot carry the configured maximum message size.
	ErrLimitMismatch = errors.New("message size limit mismatch")
	// ErrUnknownAccount is returned by the directory for an account it has
	// never seen.
	ErrUnknownAccount = errors.New("unknown account")
	// ErrAccountClosed is returned when publishing for an account that is not
	// active (suspended, deleting or deleted).
	ErrAccountClosed = errors.New("account not active")
	// ErrStopped is the cause given to handler contexts when the consumer
	// stops, so a handler can tell a controlled stop from a timeout.
	ErrStopped = errors.New("consumer stopped")
)

// SizeError says how large a message was and what the limit is.
type SizeError struct {
	Subject string
	Size    int
	Limit   int
}

func (e *SizeError) Error() string {
	return fmt.Sprintf("message to %s is %d bytes (payload and headers), over the limit of %d bytes", e.Subject, e.Size, e.Limit)
}

// Unwrap makes errors.Is(err, ErrTooLarge) true.
func (e *SizeError) Unwrap() error { return ErrTooLarge }
