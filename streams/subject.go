package streams

import (
	"fmt"
	"strconv"
	"strings"
)

// Kind is the first token of every subject and names the family of streams
// it lives in.
type Kind string

// The four kinds of per-shard stream.
const (
	// KindInbound holds inbound data (identify, track) waiting for the processor.
	KindInbound Kind = "inbound"
	// KindOutbound holds outbound messages waiting for the sender, by channel.
	KindOutbound Kind = "outbound"
	// KindAccounts holds account lifecycle events (created, suspended, ...).
	KindAccounts Kind = "accounts"
	// KindDeadLetter holds dead-letter envelopes, by the stage that gave up.
	KindDeadLetter Kind = "deadletter"
)

// Kinds lists every kind, in the order streams are provisioned.
var Kinds = []Kind{KindInbound, KindOutbound, KindAccounts, KindDeadLetter}

// heldToken marks a parked copy of a message whose account is suspended:
// <kind>.<shard>.<account>.held.<type>. Stage consumers filter on exactly four
// tokens, so held messages are never delivered; the account's purge filter
// (<kind>.<shard>.<account>.>) still covers them.
const heldToken = "held"

// deferredToken marks a deferred copy: <kind>.<shard>.<account>.deferred.<seq>.
const deferredToken = "deferred"

// MaxAccountIDLen is the longest account id accepted.
const MaxAccountIDLen = 64

// ValidateAccountID reports whether id can be used as an account id: it must
// be a single subject-safe token of 1 to 64 characters from [a-z0-9_-],
// starting with a letter or digit. Account ids are placed inside subjects, so
// anything else (dots, wildcards, spaces, upper case) is refused.
func ValidateAccountID(id string) error {
	if id == "" {
		return fmt.Errorf("%w: account id is empty", ErrInvalidAccountID)
	}
	if len(id) > MaxAccountIDLen {
		return fmt.Errorf("%w: account id is %d characters, over the limit of %d", ErrInvalidAccountID, len(id), MaxAccountIDLen)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		ok := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || ((c == '-' || c == '_') && i > 0)
		if !ok {
			return fmt.Errorf("%w: %q: only a-z, 0-9, '-' and '_' are allowed, starting with a letter or digit", ErrInvalidAccountID, id)
		}
	}
	return nil
}

// validateToken checks a message type token (track, webhook, processor...).
func validateToken(what, tok string) error {
	if tok == "" || tok == heldToken || tok == deferredToken || strings.ContainsAny(tok, ".*> \t\r\n") {
		return fmt.Errorf("streams: invalid %s token %q", what, tok)
	}
	return nil
}

// Subject is a parsed subject: <kind>.<shard>.<account>.<type>.
type Subject struct {
	Kind    Kind
	Shard   int
	Account string
	Type    string
	// Held is true for the parked copy of a message of a suspended account.
	Held bool
}

// NewSubject builds and validates a subject.
func NewSubject(kind Kind, shard int, account, typ string) (Subject, error) {
	s := Subject{Kind: kind, Shard: shard, Account: account, Type: typ}
	if err := s.Validate(); err != nil {
		return Subject{}, err
	}
	return s, nil
}

// Validate checks every token.
func (s Subject) Validate() error {
	switch s.Kind {
	case KindInbound, KindOutbound, KindAccounts, KindDeadLetter:
	default:
		return fmt.Errorf("streams: unknown subject kind %q", s.Kind)
	}
	if s.Shard < 0 {
		return fmt.Errorf("streams: negative shard %d", s.Shard)
	}
	if err := ValidateAccountID(s.Account); err != nil {
		return err
	}
	return validateToken("type", s.Type)
}

// String renders the subject.
func (s Subject) String() string {
	var b strings.Builder
	b.Grow(len(s.Kind) + len(s.Account) + len(s.Type) + 12)
	b.WriteString(string(s.Kind))
	b.WriteByte('.')
	b.WriteString(strconv.Itoa(s.Shard))
	b.WriteByte('.')
	b.WriteString(s.Account)
	b.WriteByte('.')
	if s.Held {
		b.WriteString(heldToken)
		b.WriteByte('.')
	}
	b.WriteString(s.Type)
	return b.String()
}

// ParseSubject parses <kind>.<shard>.<account>.<type> (or the held form
// <kind>.<shard>.<account>.held.<type>).
func ParseSubject(subject string) (Subject, error) {
	parts := strings.Split(subject, ".")
	var s Subject
	switch {
	case len(parts) == 4:
	case len(parts) == 5 && parts[3] == heldToken:
		s.Held = true
		parts = append(parts[:3], parts[4])
	default:
		return Subject{}, fmt.Errorf("streams: subject %q is not <kind>.<shard>.<account>.<type>", subject)
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil {
		return Subject{}, fmt.Errorf("streams: subject %q: shard %q is not a number", subject, parts[1])
	}
	s.Kind, s.Shard, s.Account, s.Type = Kind(parts[0]), n, parts[2], parts[3]
	if err := s.Validate(); err != nil {
		return Subject{}, fmt.Errorf("streams: subject %q: %w", subject, err)
	}
	return s, nil
}

// StreamName is the name of the stream of a kind on a shard: INBOUND_3.
func StreamName(kind Kind, shard int) string {
	return strings.ToUpper(string(kind)) + "_" + strconv.Itoa(shard)
}

// ShardSubjects is the subject filter of a kind's stream on a shard: inbound.3.>
func ShardSubjects(kind Kind, shard int) string {
	return string(kind) + "." + strconv.Itoa(shard) + ".>"
}

// StageFilter is the filter of a stage consumer: exactly four tokens, so parked
// (held) copies are not delivered: inbound.3.*.*
func StageFilter(kind Kind, shard int) string {
	return string(kind) + "." + strconv.Itoa(shard) + ".*.*"
}

// AccountFilter covers every subject of one account in a kind's stream on a
// shard, held copies included: inbound.3.acme.>
func AccountFilter(kind Kind, shard int, account string) string {
	return string(kind) + "." + strconv.Itoa(shard) + "." + account + ".>"
}

// HeldFilter covers the parked copies of one account: outbound.3.acme.held.>
func HeldFilter(kind Kind, shard int, account string) string {
	return string(kind) + "." + strconv.Itoa(shard) + "." + account + "." + heldToken + ".>"
}
